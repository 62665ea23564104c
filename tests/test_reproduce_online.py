"""The SAIL and SR-PPO reproductions run end to end in --quick mode (sharing one workdir, so one
SFT stage) and write results.json with the contract keys and per-seed values; a re-run reuses
every stage and evaluation."""
import json
import math

from experiments.reproduce import sail, sr_ppo

KEYS = {"name", "paper", "claim", "supported", "verdict", "rows", "settings", "quick", "seeds", "wall_clock_s",
        "plots", "command"}


def _check(out, name, methods, seeds=1):
    res = json.loads((out / "results.json").read_text())
    assert KEYS <= set(res), sorted(KEYS - set(res))
    assert res["name"] == name and res["quick"] is True and isinstance(res["supported"], bool)
    assert res["verdict"] and res["claim"]
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == methods
    for r in rows.values():
        assert r["seeds"] == list(range(seeds))
        for metric in ("gold_reward",) + (("win_rate_vs_sft",) if r["method"] != "sft" else ()):
            v = r[metric]["values"]
            assert len(v) == seeds and all(math.isfinite(x) and 0.0 <= x <= 1.0 for x in v), (r["method"], v)
            assert abs(r[metric]["mean"] - sum(v) / seeds) < 1e-9
    for p in res["plots"]:
        assert p.endswith(".png")
    return res


def test_sail_and_sr_ppo_quick_runs_write_their_results(tmp_path):
    work = tmp_path / "runs"
    sail.main(["--quick", "--seeds", "1", "--out", str(tmp_path / "sail"), "--workdir", str(work)])
    first = _check(tmp_path / "sail", "sail", ["sft", "sail", "offline_dpo"])
    sr_ppo.main(["--quick", "--seeds", "1", "--out", str(tmp_path / "sr_ppo"), "--workdir", str(work)])
    _check(tmp_path / "sr_ppo", "sr_ppo", ["sft", "sr_ppo"])
    # the second script reused the first one's SFT policy: one SFT stage of each length
    assert sorted(p.name for p in work.glob("sft*")) == ["sft10", "sft80"]
    # a re-run redoes nothing and reports the same numbers
    again = sail.main(["--quick", "--seeds", "1", "--out", str(tmp_path / "sail"), "--workdir", str(work)])
    assert again["rows"] == first["rows"]
