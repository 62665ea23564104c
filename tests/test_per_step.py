"""Per-step negatives (Setlur et al., 2024): Monte-Carlo best-of-K step values, the first-pit
critical step, pair construction with every drop counted, the `per_step` pipeline end to end
(configs/per_step.py) and `experiments/reproduce/per_step.py --quick`."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from alignment import advantages, learners, tasks
from alignment.engine.config import get_config
from alignment.learners import per_step
from alignment.tasks import arithmetic
from alignment.tokenizer import tiny_tokenizer
from experiments.pipelines import per_step as pipeline
from experiments.reproduce import per_step as repro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "per_step.py")
TASK = tasks.get_task("arithmetic", num_ops=(2, 3), operand_range=(1, 9), operators=("+", "-"))

# compute: (3+4)-2 -> 3+4=7, 7-2=5, answer: 5
PROMPT = "compute: (3+4)-2"
RIGHT = "3+4=7\n7-2=5\nanswer: 5"
WRONG_STEP2 = "3+4=7\n7-2=4\nanswer: 4"  # first error: step index 1
WRONG_STEP1 = "3+4=8\n8-2=6\nanswer: 6"  # first error: step index 0


def _oracle(p_clean: float, rollouts: int, seed: int = 0):
    """Rollouts that succeed w.p. `p_clean` from a prefix without a wrong step, never after one."""
    rng = np.random.default_rng(seed)

    def fn(prompts, prefixes):
        p = np.array(
            [p_clean if TASK.first_error(q, x) is None else 0.0 for q, x in zip(prompts, prefixes)]
        )
        return rng.random((len(prompts), rollouts)) < p[:, None]

    return fn


# ----------------------------------------------------------------------------- best-of-K values


def test_best_of_k_exact_values():
    # M == K: the max over the rollouts
    q = advantages.best_of_k_values(
        successes=np.array([[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [1] * 5]), k=5
    )
    np.testing.assert_allclose(np.asarray(q), [0.0, 1.0, 1.0])
    # M = 10, c = 1, K = 5: 1 - C(9,5)/C(10,5) = 1/2 (the pass@k estimator)
    one = np.zeros(10)
    one[3] = 1
    for c in range(11):
        s = np.r_[np.ones(c), np.zeros(10 - c)]
        want = 1 - math.comb(10 - c, 5) / math.comb(10, 5)
        np.testing.assert_allclose(
            float(advantages.best_of_k_values(successes=s, k=5)), want, atol=1e-6
        )
    # K = 1: the plain success rate
    np.testing.assert_allclose(
        float(advantages.best_of_k_values(successes=one, k=1)), 0.1, atol=1e-6
    )


@pytest.mark.parametrize("m", [5, 20])
def test_best_of_k_is_unbiased_for_known_success_rates(m):
    """E[Q_hat] = 1 - (1 - p)^K for rollouts that succeed w.p. p (K = 5, the paper's)."""
    rng = np.random.default_rng(0)
    p_P = np.array([0.0, 0.05, 0.2, 0.5, 0.9])
    trials = 4000
    s = (rng.random((len(p_P), trials, m)) < p_P[:, None, None]).astype(np.float32)
    est = np.asarray(advantages.best_of_k_values(successes=s, k=5)).mean(axis=1)
    want = 1 - (1 - p_P) ** 5
    np.testing.assert_allclose(est, want, atol=0.03)


def test_best_of_k_refuses_bad_input():
    with pytest.raises(ValueError, match="k"):
        advantages.best_of_k_values(successes=np.zeros((2, 3)), k=4)
    with pytest.raises(ValueError, match="0/1"):
        advantages.best_of_k_values(successes=np.array([[0.5, 1.0]]), k=1)
    with pytest.raises(ValueError, match="finite"):
        advantages.best_of_k_values(successes=np.array([[np.nan, 1.0]]), k=1)


# ----------------------------------------------------------------------------- critical step


def test_first_pit_is_the_first_lowest_q():
    q = np.array(
        [
            [0.8, 0.2, 0.2, 0.0],  # lowest 0.0 at step 3
            [0.6, 0.0, 0.5, 0.0],  # tie at the minimum: the first
            [0.0, 0.0, 0.0, 0.0],  # never solvable: no pit
            [0.9, 0.9, 0.9, 0.9],
        ]
    )  # padded row without steps
    m = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
    crit, pit = advantages.first_pit(
        step_values=q, step_mask=m, initial_values=np.array([0.5, 0.5, 0.0, 0.5])
    )
    np.testing.assert_array_equal(np.asarray(crit), [3, 1, 0, -1])
    np.testing.assert_array_equal(np.asarray(pit), [True, True, False, False])
    # the pit's advantage Q_c - Q_{c-1} is negative even when Q_0 is already 0
    crit, pit = advantages.first_pit(
        step_values=np.array([[0.4, 0.0, 0.0]]),
        step_mask=np.ones((1, 3)),
        initial_values=np.array([0.0]),
    )
    assert int(crit[0]) == 1 and bool(pit[0])


def test_step_values_recover_known_values_and_the_first_error():
    """Deterministic rollouts with c successes of M per prefix give the closed-form Q; the
    oracle policy (succeeds until a wrong step) puts the pit at the checker's first error."""
    m, k = 6, 5
    calls = []

    def counted(prompts, prefixes):
        calls.append(list(zip(prompts, prefixes)))
        c = np.array(
            [3 - x.count("\n") for x in prefixes]
        )  # 3, 2, 1 successes for prefixes 0, 1, 2
        return np.arange(m)[None, :] < c[:, None]

    (sv,) = per_step.estimate_step_values(TASK, [PROMPT], [WRONG_STEP2], counted, k=k)
    q = lambda c: 1 - math.comb(m - c, k) / math.comb(m, k)  # noqa: E731
    np.testing.assert_allclose(sv.q0, q(3), atol=1e-6)
    np.testing.assert_allclose(
        sv.q, [q(2), q(1), 0.0], atol=1e-6
    )  # the last step: the response's own verdict
    np.testing.assert_allclose(sv.advantages, np.diff([q(3), q(2), q(1), 0.0]), atol=1e-6)
    assert sv.critical == 2 and sv.has_pit
    # two negatives of one problem share the bare prompt's rollouts (and identical prefixes)
    calls.clear()
    per_step.estimate_step_values(TASK, [PROMPT, PROMPT], [WRONG_STEP2, WRONG_STEP1], counted, k=k)
    assert (
        len(calls) == 1 and len(calls[0]) == len(set(calls[0])) == 5
    )  # "", 2 of each response's own

    values = per_step.estimate_step_values(
        TASK, [PROMPT, PROMPT], [WRONG_STEP2, WRONG_STEP1], _oracle(0.9, rollouts=40), k=5
    )
    assert (
        [v.critical for v in values]
        == [TASK.first_error(PROMPT, WRONG_STEP2), TASK.first_error(PROMPT, WRONG_STEP1)]
        == [1, 0]
    )
    assert all(v.has_pit and v.q0 > 0.99 for v in values)


# ----------------------------------------------------------------------------- pairs


def _samples():
    prompts = [PROMPT, "compute: (2+2)+5", "compute: (9-1)-3", "compute: (1+1)+1"]
    texts = [
        [RIGHT, WRONG_STEP2, WRONG_STEP2],  # correct + (duplicate) incorrect
        ["2+2=5\n5+5=10\nanswer: 10", "2+2=4\n4+5=8\nanswer: 8"],  # no correct sample
        ["9-1=8\n8-3=5\nanswer: 5", "9-1=8\n8-3=5\nanswer: 5"],  # all correct
        ["1+1=3\n3+1=4\nanswer: 4", ""],
    ]  # a never-solvable negative, an empty one
    correct = [[TASK.verify(p, t) for t in row] for p, row in zip(prompts, texts)]
    demos = ["\n".join(arithmetic.parse_problem(p).solution_steps()) for p in prompts]
    return per_step.SampleSet(prompts, texts, correct, demos)


def test_pairs_cut_the_negative_after_the_critical_step_and_count_drops():
    s = _samples()
    assert s.correct[0] == [True, False, False] and s.correct[2] == [True, True]
    plan, _ = per_step.pair_plan(s, chosen="sample_or_demonstration", negatives_per_problem=0)
    assert plan == [(0, 1), (1, 0), (1, 1), (3, 0), (3, 1)]  # distinct negatives only

    def rollouts(prompts, prefixes):  # problem 3 is never solved; the others as the oracle
        base = _oracle(0.9, rollouts=20)(prompts, prefixes)
        return base & np.array(["(1+1)" not in p for p in prompts])[:, None]

    values = dict(
        zip(
            plan,
            per_step.estimate_step_values(
                TASK,
                [s.prompts[g] for g, _ in plan],
                [s.texts[g][j] for g, j in plan],
                rollouts,
                k=5,
            ),
        )
    )
    rows, stats = per_step.make_pairs(
        s,
        TASK,
        method="per_step",
        chosen="sample_or_demonstration",
        negatives_per_problem=0,
        seed=0,
        step_values=values,
    )
    by_problem = {r["problem"]: r for r in rows}
    assert by_problem[0]["chosen"] == RIGHT and by_problem[0]["chosen_source"] == "sample"
    assert by_problem[0]["rejected"] == "3+4=7\n7-2=4"  # through the critical step, no newline
    assert by_problem[0]["rejected_is_prefix"] and by_problem[0]["critical_step"] == 1
    assert by_problem[1]["chosen_source"] == "demonstration"
    # both negatives of problem 1, each cut after its own first wrong step
    assert sorted(r["rejected"] for r in rows if r["problem"] == 1) == ["2+2=4\n4+5=8", "2+2=5"]
    assert stats == {
        **stats,
        "problems": 4,
        "dropped_problems_no_correct": 0,
        "dropped_problems_no_incorrect": 1,
        "negatives": 5,
        "dropped_negatives_no_pit": 1,
        "dropped_negatives_no_steps": 1,
        "pairs": 3,
        "chosen_from_demonstration": 2,
        "critical_is_first_error": 1.0,
    }
    assert (
        stats["negatives"]
        == stats["pairs"]
        + stats["dropped_negatives_no_pit"]
        + stats["dropped_negatives_no_steps"]
        + stats["dropped_negatives_identical"]
    )

    # chosen="sample": a problem without a verified sample is dropped and counted
    _, stats = per_step.make_pairs(
        s,
        TASK,
        method="per_step",
        chosen="sample",
        negatives_per_problem=1,
        seed=0,
        step_values=values,
    )
    assert stats["dropped_problems_no_correct"] == 2 and stats["pairs"] == 1


def test_naive_pairs_keep_whole_responses_and_rft_keeps_correct_samples():
    s = _samples()
    rows, stats = per_step.make_pairs(
        s, TASK, method="naive", chosen="sample_or_demonstration", negatives_per_problem=1, seed=0
    )
    assert [(r["problem"], r["rejected"]) for r in rows] == [
        (0, WRONG_STEP2),
        (1, s.texts[1][0]),
        (3, s.texts[3][0]),
    ]
    assert not any(r["rejected_is_prefix"] for r in rows)
    assert stats["dropped_problems_no_incorrect"] == 1 and stats["pairs"] == 3
    rft, stats = per_step.rft_rows(s)
    assert [r["completion"] for r in rft] == [
        RIGHT,
        "9-1=8\n8-3=5\nanswer: 5",
    ]  # distinct correct samples
    assert stats == {"problems": 4, "dropped_problems_no_correct": 2, "rft_examples": 2}


def test_data_path_trains_a_rejected_prefix_without_eos():
    assert per_step.prefix_eos_supported(tiny_tokenizer())


# ----------------------------------------------------------------------------- end to end


def test_config_refuses_bad_settings():
    c = get_config(CONFIG, "tiny")
    assert c.kind == "per_step" and c.per_step.method == "per_step" and c.per_step.k == 5
    # each stage is an engine config declared in the config file; seed and tokenizer are shared
    assert (c.sft.kind, c.rft.kind, c.preference.kind) == ("sft", "sft", "preference")
    c2 = get_config(CONFIG, "tiny", {"seed": 3, "preference.num_train_steps": 5})
    assert c2.sft.seed == c2.preference.data.seed == 3 and c2.rft.num_train_steps == 5
    for key, value, match in (
        ("per_step.method", "dpo", "method"),
        ("per_step.k", 6, "k=6 exceeds"),
        ("per_step.chosen", "best", "chosen"),
    ):
        bad = get_config(CONFIG, "tiny", {key: value})
        with pytest.raises(ValueError, match=match):
            pipeline.check_per_step_config(bad)
        with pytest.raises(ValueError, match=match):
            learners.validate(bad)


def test_tiny_config_end_to_end(tmp_path, monkeypatch):
    """configs/per_step.py:tiny (shortened) through `learners.run`: SFT stage, samples, step values
    (oracle rollouts: the tiny SFT policy is too weak to give pits reliably), pairs, DPO."""
    monkeypatch.setattr(
        per_step, "policy_rollout_fn", lambda *a, rollouts, **kw: _oracle(0.9, rollouts)
    )
    c = get_config(
        CONFIG,
        "tiny",
        {
            "per_step.sft_steps": 4,
            "per_step.num_problems": 6,
            "per_step.samples_per_problem": 2,
            "per_step.max_new_tokens": 24,
            "per_step.rollouts": 8,
            "per_step.chosen": "demonstration",
            "sft.checkpoint_every_steps": 2,
            "sft.progress_bar": False,
            "preference.num_train_steps": 2,
            "preference.checkpoint_every_steps": 2,
            "preference.optim.warmup_steps": 1,
            "preference.global_batch_size": 8,
            "preference.progress_bar": False,
        },
    )
    learners.run(c, str(tmp_path))
    stats = json.load(open(tmp_path / pipeline.STATS_FILE))
    assert stats["method"] == "per_step" and stats["problems"] == 6
    assert (
        stats["negatives"]
        == stats["pairs"]
        + stats["dropped_negatives_no_pit"]
        + stats["dropped_negatives_no_steps"]
        + stats["dropped_negatives_identical"]
    )
    rows = [json.loads(x) for x in open(tmp_path / pipeline.DATA_DIR / "train.jsonl")]
    assert len(rows) == stats["pairs"] > 0
    for r in rows:
        # the prefix through step c (0-based) holds c newlines and none after it
        assert r["rejected"].count("\n") == r["critical_step"] and not r["rejected"].endswith("\n")
    assert os.path.isfile(tmp_path / "hf" / "config.json")
    assert os.path.isfile(tmp_path / "samples" / "step_values.json")
    metrics = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert metrics[-1]["step"] == 2 and metrics[-1]["pairs"] == stats["pairs"]
    # experiments.evaluate rebuilds the run's task, its options included, from run.json
    record = json.load(open(tmp_path / "run.json"))
    want = json.loads(json.dumps(c.per_step.task_kwargs.to_dict()))
    assert record["task"] == c.task and record["task_kwargs"] == want
    assert record["task_kwargs"]  # tiny arithmetic is the easy variant, not the default task


def test_reproduction_quick(tmp_path):
    out = repro.main(["--quick", "--seeds", "1", "--out", str(tmp_path)])
    on_disk = json.load(open(tmp_path / "results.json"))
    for key in (
        "name",
        "paper",
        "claim",
        "supported",
        "verdict",
        "rows",
        "settings",
        "quick",
        "wall_clock_s",
    ):
        assert key in on_disk, key
    assert on_disk["name"] == "per_step" and on_disk["quick"] is True
    assert isinstance(on_disk["supported"], bool) and on_disk["verdict"]
    assert [r["method"] for r in on_disk["rows"]] == ["sft", "rft", "per_step", "naive"]
    for r in on_disk["rows"]:
        assert r["seeds"] == [0] and len(r["accuracy"]["values"]) == 1
        assert all(0.0 <= v <= 1.0 for v in r["accuracy"]["values"])
    assert len(on_disk["settings"]["per_seed_diagnostics"]["per_step_pairs"]) == 1
    assert out["supported"] == on_disk["supported"]
