"""Evaluation statistics against closed forms and brute-force enumeration (no models)."""

import itertools
import math
import os

import numpy as np
import pytest

from alignment import evaluation as ev
from alignment import plotting


@pytest.mark.parametrize(
    "n,c,k", [(n, c, k) for n in range(1, 7) for c in range(n + 1) for k in range(1, n + 1)]
)
def test_pass_at_k_equals_enumeration_over_k_subsets(n, c, k):
    # pass@k = probability that a uniformly random k-subset of the n samples holds a correct one.
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
    assert ev.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_closed_forms_and_large_n_stability():
    assert ev.pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 = c / n
    assert ev.pass_at_k(10, 3, 2) == pytest.approx(1 - math.comb(7, 2) / math.comb(10, 2))
    assert ev.pass_at_k(10, 0, 5) == 0.0 and ev.pass_at_k(10, 6, 5) == 1.0
    # comb(2000, 1000) overflows a float; the product form must not.
    value = ev.pass_at_k(2000, 7, 1000)
    assert value == pytest.approx(1 - math.comb(1993, 1000) / math.comb(2000, 1000), rel=1e-9)


@pytest.mark.parametrize(
    "args,match",
    [
        ((3, 4, 1), "0 <= c <= n"),
        ((3, 1, 4), "1 <= k <= n"),
        ((3, 1, 0), "1 <= k <= n"),
        ((3.0, 1, 1), "n must be an int"),
    ],
)
def test_pass_at_k_rejects_bad_arguments(args, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ev.pass_at_k(*args)


def test_mean_pass_at_k_averages_prompts_and_default_ks():
    correct = np.array(
        [[True, False, False, False], [False, False, False, False], [True, True, True, True]]
    )
    assert ev.mean_pass_at_k(correct, 1) == pytest.approx((0.25 + 0 + 1) / 3)
    assert ev.mean_pass_at_k(correct, 4) == pytest.approx((1 + 0 + 1) / 3)
    assert (
        ev.default_ks(1) == [1]
        and ev.default_ks(4) == [1, 2, 4]
        and ev.default_ks(6) == [1, 2, 4, 6]
    )
    with pytest.raises(TypeError, match="bool"):
        ev.mean_pass_at_k(correct.astype(int), 1)


def test_win_rate_ties_count_half_and_identical_is_one_half():
    assert ev.win_rate([1.0, 0.0, 0.5], [0.0, 1.0, 0.5]) == pytest.approx(0.5)
    assert ev.win_rate([2.0, 2.0], [1.0, 2.0]) == pytest.approx(0.75)
    rng = np.random.default_rng(0)
    r = rng.normal(size=(5, 3))
    assert ev.win_rate(r, r) == 0.5  # exact: each cross pair appears once each way, or ties
    assert ev.win_rate(np.ones(4), np.zeros(4)) == 1.0


def test_win_rate_all_pairs_within_prompt_matches_brute_force():
    rng = np.random.default_rng(1)
    pol, ref = (
        rng.integers(0, 3, size=(4, 3)).astype(float),
        rng.integers(0, 3, size=(4, 2)).astype(float),
    )
    wins = [
        1.0 if a > b else 0.5 if a == b else 0.0 for p in range(4) for a in pol[p] for b in ref[p]
    ]  # never across prompts
    assert ev.win_rate(pol, ref) == pytest.approx(np.mean(wins))


def test_kl_from_samples_closed_form_and_zero_for_identical_models():
    logp = np.array([-3.0, -1.5, -7.25])
    assert ev.kl_from_samples(logp, logp) == 0.0
    # Bernoulli(0.8) policy vs Bernoulli(0.5) reference: the estimator over the exact sample
    # frequencies equals the analytic KL.
    samples = np.array([1] * 8 + [0] * 2)
    pi = np.where(samples == 1, np.log(0.8), np.log(0.2))
    ref = np.full(10, np.log(0.5))
    analytic = 0.8 * np.log(0.8 / 0.5) + 0.2 * np.log(0.2 / 0.5)
    assert ev.kl_from_samples(pi, ref) == pytest.approx(analytic)


def test_ranking_accuracy_ties_half():
    assert ev.ranking_accuracy([1.0, 0.0, 2.0, 3.0], [0.0, 1.0, 2.0, -1.0]) == pytest.approx(
        2.5 / 4
    )


def test_gold_ranked_pairs_orders_by_gold_and_skips_ties():
    pairs = ev.gold_ranked_pairs(np.array([[0.0, 1.0, 1.0], [0.5, 0.5, 0.5]]))
    assert pairs == [(0, 1, 0), (0, 2, 0)]


@pytest.mark.parametrize(
    "fn,args,match",
    [
        (ev.kl_from_samples, ([0.0, np.nan], [0.0, 0.0]), "policy_logps holds 1 non-finite"),
        (ev.kl_from_samples, ([0.0], [0.0, 0.0]), "shape"),
        (ev.win_rate, ([np.inf], [0.0]), "policy_rewards holds 1 non-finite"),
        (ev.win_rate, (np.zeros((2, 2)), np.zeros((3, 2))), "2 prompts"),
        (ev.ranking_accuracy, ([], []), "chosen_scores is empty"),
        (ev.mean_stderr, ([[1.0]],), "ndim"),
    ],
)
def test_bad_input_raises_naming_the_argument(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


def test_mean_stderr():
    assert ev.mean_stderr([2.0]) == (2.0, 0.0)
    m, s = ev.mean_stderr([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and s == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)


RESULT = {
    "gold_reward": 0.75,
    "gold_reward_stderr": 0.05,
    "reference_gold_reward": 0.5,
    "win_rate": 0.6,
    "kl": 1.25,
    "kl_stderr": 0.1,
    "pass_at_k": {"1": 0.5, "2": 0.75},
    "ranking_accuracy": None,
    "task": "sorting",
    "examples": [
        {
            "prompt": "sort: 3 1",
            "policy": "1 | 3",
            "policy_gold_reward": 1.0,
            "reference": "3 1",
            "reference_gold_reward": 0.0,
        }
    ],
}


def test_markdown_table_and_report():
    table = ev.markdown_table({"a": RESULT, "b": {**RESULT, "kl": 2.0, "pass_at_k": None}})
    lines = table.strip().split("\n")
    assert lines[0] == "| run | gold reward | ref. gold reward | win rate | KL | pass@1 |"
    assert lines[2] == "| a | 0.75 ± 0.05 | 0.5 | 0.6 | 1.25 ± 0.1 | 0.5 |"
    assert lines[3] == "| b | 0.75 ± 0.05 | 0.5 | 0.6 | 2 ± 0.1 | - |"
    report = ev.markdown_report(RESULT)
    assert "| policy | 0.5 | 0.75 |" in report and "1 \\| 3" in report  # pipes in text are escaped
    with pytest.raises(ValueError, match="no results"):
        ev.markdown_table([])


def test_write_json_refuses_nan(tmp_path):
    path = ev.write_json({"kl": 1.0}, str(tmp_path / "x" / "eval.json"))
    assert open(path).read().startswith("{")
    with pytest.raises(ValueError):
        ev.write_json({"kl": float("nan")}, str(tmp_path / "nan.json"))


def test_frontier_plot_writes_png(tmp_path):
    points = [
        {"kl": 0.0, "gold_reward": 0.2, "label": "ref", "series": "dpo"},
        {
            "kl": 1.5,
            "gold_reward": 0.6,
            "gold_reward_stderr": 0.05,
            "label": "b=0.1",
            "series": "dpo",
        },
        {"kl": 0.7, "gold_reward": 0.5, "label": "ipo", "series": "ipo"},
    ]
    path = ev.frontier_plot(points, str(tmp_path / "f.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 5000
    with pytest.raises(ValueError, match="point 1 has no 'kl'"):
        ev.frontier_plot([points[0], {"gold_reward": 1.0}], str(tmp_path / "g.png"))
    with pytest.raises(ValueError, match="finite"):
        ev.frontier_plot([{"kl": float("nan"), "gold_reward": 1.0}], str(tmp_path / "g.png"))
    with pytest.raises(ValueError, match="no points"):
        ev.frontier_plot([], str(tmp_path / "g.png"))


def test_metrics_plot_writes_png_and_names_missing_keys(tmp_path):
    rows = [{"step": i, "loss": 1.0 / (i + 1), "kl": 0.1 * i} for i in range(5)] + [
        {"step": 5, "loss": 0.1}
    ]
    path = plotting.metrics_plot(rows, ["loss", "kl"], str(tmp_path / "curves.png"))
    assert open(path, "rb").read(4) == b"\x89PNG"
    with pytest.raises(ValueError, match="'reward'"):
        plotting.metrics_plot(rows, ["reward"], str(tmp_path / "x.png"))
