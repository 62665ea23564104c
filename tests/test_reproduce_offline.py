"""experiments/reproduce/{rso,rpo}.py: the --quick runs end to end (results.json contract, per-seed
values, plots, reuse of stage outputs) and the pieces they add (the exploitable proxy, pairing,
decision rules)."""

import json
import math
import os

import numpy as np
import pytest

from alignment import metrics as metrics_lib
from alignment import tasks
from experiments.reproduce import common, rpo, rso

CONTRACT_KEYS = {
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


def _check_contract(result, out, name, methods, seeds=(0,)):
    on_disk = json.load(open(os.path.join(out, "results.json")))
    assert on_disk == result
    assert CONTRACT_KEYS <= set(result), sorted(CONTRACT_KEYS - set(result))
    assert (
        result["name"] == name and result["quick"] is True and isinstance(result["supported"], bool)
    )
    assert result["claim"] and result["paper"] and result["verdict"]
    assert result["seeds"] == list(seeds)
    rows = {r["method"]: r for r in result["rows"]}
    assert set(methods) <= set(rows), sorted(rows)
    for r in result["rows"]:
        assert r["seeds"] == list(seeds)
        for key, value in r.items():
            if isinstance(value, dict):
                assert len(value["values"]) == len(seeds), (r["method"], key)
                assert all(math.isfinite(v) for v in value["values"]), (r["method"], key)
                assert value["mean"] == pytest.approx(np.mean(value["values"]))
    assert result["plots"]
    for p in result["plots"]:
        assert os.path.isfile(p) and os.path.getsize(p) > 1000, p
    assert os.path.isfile(os.path.join(out, "results.md"))
    return rows


# ----------------------------------------------------------------------------- rpo


def test_length_proxy_is_gold_plus_weighted_word_count():
    task = tasks.get_task("sentiment")
    prompts = ["the movie was", "the food was", "the book was"]
    responses = [" wonderful.", " awful, and i regret going.", " long, and then we went home."]
    gold = task.gold_rewards(prompts, responses)
    got = rpo.length_proxy(prompts, responses, task=task, length_weight=0.5)
    np.testing.assert_allclose(got, gold + 0.5 * np.array([1, 5, 6]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        rpo.length_proxy(prompts, responses, task=task, length_weight=0.0), gold, atol=1e-6
    )
    # the exploit: padding a response with sentiment-neutral words raises the proxy, not the gold score
    longer = [r + " and then we went home" for r in responses]
    assert (rpo.length_proxy(prompts, longer, task=task, length_weight=0.5) > got).all()
    with pytest.raises(ValueError, match="length_weight"):
        rpo.length_proxy(prompts, responses, task=task, length_weight=-1.0)
    with pytest.raises(ValueError, match="2 responses"):
        rpo.length_proxy(prompts, responses[:2], task=task, length_weight=0.1)


def test_best_worst_pairs_picks_extremes_and_drops_ties_and_empties():
    prompts = ["p0", "p1", "p2"]
    texts = ["a", "b", "c", "same", "same", "same", "", "x", "y"]
    scores = [0.1, 0.9, -0.5, 1.0, 1.0, 1.0, 5.0, 0.2, 0.3]
    rows, dropped = rpo.best_worst_pairs(
        prompts, texts, scores, samples_per_prompt=3, min_margin=0.05
    )
    assert dropped == 1  # p1: all scores tie
    assert rows[0] == {
        "prompt": "p0",
        "chosen": "b",
        "rejected": "c",
        "chosen_reward": 0.9,
        "rejected_reward": -0.5,
    }
    assert (rows[1]["chosen"], rows[1]["rejected"]) == (
        "y",
        "x",
    )  # the empty text (score 5) never competes
    assert (
        len(rpo.best_worst_pairs(prompts, texts, scores, samples_per_prompt=3, min_margin=0.5)[0])
        == 1
    )
    with pytest.raises(ValueError, match="3 prompts x 2 samples"):
        rpo.best_worst_pairs(prompts, texts, scores, samples_per_prompt=2, min_margin=0.0)


def test_rpo_decision_rule():
    falls, holds = common.stats([-3.0, -2.5, -3.5]), common.stats([0.5, 0.2, 0.4])
    assert rpo.decide(falls, holds)[0]
    assert not rpo.decide(common.stats([-0.1, 0.4, -0.5]), holds)[0]  # DPO's change not clearly < 0
    ok, verdict = rpo.decide(falls, common.stats([-3.0, -2.0, -2.6]))  # RPO falls as much
    assert not ok and "RPO is not above DPO" in verdict
    assert rpo.tail_mean(np.arange(10.0), 0.2) == 8.5 and rpo.tail_mean(np.arange(3.0), 0.01) == 2.0


@pytest.fixture(scope="module")
def rpo_quick(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("rpo_quick"))
    return out, rpo.main(["--quick", "--seeds", "1", "--out", out])


def test_rpo_quick_runs_end_to_end(rpo_quick):
    out, result = rpo_quick
    rows = _check_contract(result, out, "rpo", ["SFT", "DPO", "RPO"])
    for m in ("DPO", "RPO"):
        assert {
            "chosen_logp_change",
            "chosen_logp",
            "gold_reward",
            "win_rate_vs_sft",
            "kl_vs_sft",
        } <= set(rows[m])
    for seed in (0,):
        d = os.path.join(out, "runs", f"seed{seed}")
        # both methods trained on the same proxy-labelled pairs from the same SFT policy
        for m in ("dpo", "rpo"):
            run = json.load(open(os.path.join(d, m, "run.json")))
            assert run["loss"] == m and run["reference"] == os.path.join(d, "sft", "hf")
            # at step 1 the policy is the SFT policy: the chosen log-ratio starts at exactly 0
            first = metrics_lib.read_jsonl(os.path.join(d, m, "metrics.jsonl"))[0]
            assert first["step"] == 1 and abs(first["chosen_rewards"]) < 1e-4, first
        pairs = [json.loads(x) for x in open(os.path.join(d, "pairs", "train.jsonl"))]
        assert pairs and all(p["chosen_reward"] > p["rejected_reward"] for p in pairs)


def test_rpo_rerun_reuses_every_stage(rpo_quick):
    out, result = rpo_quick
    stamp = os.path.getmtime(os.path.join(out, "runs", "seed0", "dpo", "hf", "config.json"))
    again = rpo.main(["--quick", "--seeds", "1", "--out", out])
    assert again["rows"] == result["rows"]
    assert os.path.getmtime(os.path.join(out, "runs", "seed0", "dpo", "hf", "config.json")) == stamp


# ----------------------------------------------------------------------------- rso


def test_best_is_interior():
    assert rso.best_is_interior([(0.1, 0.5), (0.5, 0.7), (2.5, 0.6), (math.inf, 0.55)])
    assert not rso.best_is_interior(
        [(0.1, 0.8), (0.5, 0.7), (math.inf, 0.55)]
    )  # smallest beta best
    assert not rso.best_is_interior([(0.1, 0.5), (0.5, 0.6), (math.inf, 0.6)])  # tie with the end
    assert not rso.best_is_interior([(0.5, 0.9), (math.inf, 0.5)])  # two points have no interior


def test_rso_decision_rule():
    s = common.stats
    win = {
        "RSO": s([0.70, 0.72, 0.71]),
        "DPO": s([0.60, 0.62, 0.61]),
        "RSO-hinge": s([0.66, 0.67, 0.65]),
        "SLiC": s([0.58, 0.60, 0.59]),
    }
    sweep = [(0.1, 0.6), (0.5, 0.71), (2.5, 0.65), (math.inf, 0.61)]
    assert rso.decide(win, sweep)[0]
    assert not rso.decide(win, [(0.1, 0.75), (0.5, 0.71), (math.inf, 0.61)])[0]
    win["SLiC"] = s([0.60, 0.70, 0.65])  # within the spread
    ok, verdict = rso.decide(win, sweep)
    assert not ok and "RSO-hinge" in verdict and "does not beat" in verdict
    del win["SLiC"], win["RSO-hinge"]  # a --quick run: judged on RSO vs DPO and the sweep
    assert rso.decide(win, sweep)[0]


def test_rso_quick_runs_end_to_end(tmp_path):
    out = str(tmp_path / "rso_quick")
    result = rso.main(["--quick", "--seeds", "1", "--out", out])
    rows = _check_contract(result, out, "rso", ["SFT", "DPO", "RSO"])  # quick: no hinge pair
    assert {"win_rate_vs_sft", "gold_reward", "kl_vs_sft"} <= set(rows["RSO"])
    assert {"rm_gold_accuracy", "proxy_std"} <= set(rows["SFT"])
    s = result["settings"]["gen"]
    for seed in (0,):
        d = os.path.join(out, "runs", f"seed{seed}")
        for key, n in (("sft_dpo", s["num_accepted"]), ("rso_dpo_b0.5", s["num_samples"])):
            stats = json.load(open(os.path.join(d, key, "rso.json")))
            # every method: the same SFT policy, the same proxy, the same prompts and pair budget
            assert stats["sft_policy"] == os.path.join(d, "sft", "hf")
            assert stats["generation"]["reward"]["path"] == os.path.join(d, "rm", "hf")
            assert (
                stats["train"]["prompts"] == s["num_prompts"]
                and stats["train"]["samples_per_prompt"] == n
            )
            assert stats["train"]["accepted_per_prompt"] == s["num_accepted"]
            # rso.num_eval_prompts=0: a train split only (an empty test split would fail the TFDS build)
            assert os.listdir(os.path.join(d, key, "rso_data")) == ["train.jsonl"]
        run = json.load(open(os.path.join(d, "rso_dpo_b0.5", "run.json")))
        assert run["loss"] == "dpo" and run["reference"] == os.path.join(d, "sft", "hf")
