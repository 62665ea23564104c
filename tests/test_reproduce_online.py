"""The SAIL reproduction runs end to end in --quick mode and writes results.json with the contract
keys and per-seed values; a re-run reuses every stage and evaluation. (SR-PPO's runs in
tests/test_online_gains.py, whose setting it shares.)"""

import json
import math

from experiments.reproduce import sail

KEYS = {
    "name",
    "paper",
    "claim",
    "supported",
    "verdict",
    "rows",
    "settings",
    "quick",
    "seeds",
    "wall_clock_s",
    "plots",
    "command",
}


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
            assert len(v) == seeds and all(math.isfinite(x) and 0.0 <= x <= 1.0 for x in v), (
                r["method"],
                v,
            )
            assert abs(r[metric]["mean"] - sum(v) / seeds) < 1e-9
    for p in res["plots"]:
        assert p.endswith(".png")
    return res


def test_sail_quick_run_writes_its_results_and_a_rerun_reuses_every_stage(tmp_path):
    work = tmp_path / "runs"
    first = sail.main(
        ["--quick", "--seeds", "1", "--out", str(tmp_path / "sail"), "--workdir", str(work)]
    )
    _check(tmp_path / "sail", "sail", ["sft", "sail", "offline_dpo"])
    assert sorted(p.name for p in work.glob("sft*")) == ["sft80"]
    # a re-run redoes nothing and reports the same numbers
    again = sail.main(
        ["--quick", "--seeds", "1", "--out", str(tmp_path / "sail"), "--workdir", str(work)]
    )
    assert again["rows"] == first["rows"]
