"""Pair construction from grouped rewards (alignment/learners/pairs.py)."""

import itertools

import numpy as np
import pytest

from alignment.learners import pairs as pairs_lib


def _as_set(p):
    return {(int(g), int(c), int(r)) for g, c, r in zip(p.group, p.chosen, p.rejected)}


def _check_labels(p, rewards):
    rewards = np.asarray(rewards, np.float64)
    assert np.all(rewards[p.group, p.chosen] > rewards[p.group, p.rejected])
    np.testing.assert_allclose(
        p.margin, rewards[p.group, p.chosen] - rewards[p.group, p.rejected], rtol=1e-6
    )


def test_best_vs_worst_closed_form():
    rewards = np.array([[0.1, 0.9, -0.5, 0.3], [2.0, 1.0, 3.0, 0.0]])
    p = pairs_lib.make_pairs(rewards, strategy="best_vs_worst", seed=0)
    assert _as_set(p) == {(0, 1, 2), (1, 2, 3)}
    _check_labels(p, rewards)
    assert p.num_ties == 0 and p.num_groups_without_pair == 0


def test_random_pairs_are_disjoint_cover_the_group_and_are_labelled_by_reward():
    rng = np.random.default_rng(1)
    rewards = rng.normal(size=(50, 8))
    p = pairs_lib.make_pairs(rewards, strategy="random", seed=3)
    assert len(p) == 50 * 4  # RSO: 8 samples -> 4 disjoint pairs
    _check_labels(p, rewards)
    for g in range(50):
        sel = p.group == g
        used = np.concatenate([p.chosen[sel], p.rejected[sel]])
        assert sorted(used.tolist()) == list(range(8)), (
            "random pairs must use each sample exactly once"
        )
    capped = pairs_lib.make_pairs(rewards, strategy="random", seed=3, max_pairs_per_group=2)
    assert len(capped) == 100


def test_random_pairs_are_not_always_the_same_partition():
    rewards = np.arange(8.0)[None].repeat(200, 0)
    p = pairs_lib.make_pairs(rewards, strategy="random", seed=0)
    partitions = {
        tuple(sorted(zip(p.chosen[p.group == g], p.rejected[p.group == g]))) for g in range(200)
    }
    assert len(partitions) > 50


def test_tournament_plays_a_single_elimination_bracket():
    rng = np.random.default_rng(2)
    rewards = rng.normal(size=(30, 8))
    p = pairs_lib.make_pairs(rewards, strategy="tournament", seed=5)
    assert len(p) == 30 * 7  # 4 + 2 + 1 matches
    _check_labels(p, rewards)
    for g in range(30):
        sel = p.group == g
        # the group's best sample wins all 3 of its matches and loses none; each loser loses once
        best = int(np.argmax(rewards[g]))
        assert np.sum(p.chosen[sel] == best) == 3 and np.sum(p.rejected[sel] == best) == 0
        assert sorted(p.rejected[sel].tolist()) == sorted(set(range(8)) - {best})
    odd = pairs_lib.make_pairs(rng.normal(size=(4, 5)), strategy="tournament", seed=0)
    assert len(odd) == 4 * 4  # n - 1 matches with byes


def test_all_pairs_and_ties_are_counted_not_silently_dropped():
    rewards = np.array([[1.0, 1.0, 2.0, 0.0]])
    p = pairs_lib.make_pairs(rewards, strategy="all_pairs")
    assert len(p) == 5 and p.num_ties == 1
    expected = {
        (0, c, r) for c, r in itertools.permutations(range(4), 2) if rewards[0, c] > rewards[0, r]
    }
    assert _as_set(p) == expected
    flat_c, flat_r = p.flat(4)
    _check_labels(p, rewards)
    assert np.all(rewards.reshape(-1)[flat_c] > rewards.reshape(-1)[flat_r])
    all_tied = pairs_lib.make_pairs(np.ones((3, 4)), strategy="best_vs_worst")
    assert len(all_tied) == 0 and all_tied.num_ties == 3 and all_tied.num_groups_without_pair == 3
    s = all_tied.stats()
    assert s["pair_ties"] == 3 and s["pairs"] == 0


def test_tied_tournament_match_sends_one_on_and_emits_no_pair():
    p = pairs_lib.make_pairs(np.array([[1.0, 1.0, 1.0, 1.0]]), strategy="tournament", seed=0)
    assert len(p) == 0 and p.num_ties == 3


def test_margin_filter():
    rewards = np.array([[0.0, 0.05, 1.0, 1.2]])
    p = pairs_lib.make_pairs(rewards, strategy="all_pairs", margin=0.5)
    assert _as_set(p) == {(0, 2, 0), (0, 2, 1), (0, 3, 0), (0, 3, 1)}
    assert p.num_below_margin == 2 and np.all(p.margin >= 0.5)


def test_mask_excludes_entries():
    rewards = np.array([[5.0, 1.0, 9.0, 0.0], [3.0, 2.0, np.nan, 7.0]])
    mask = np.array([[True, True, False, True], [True, True, False, False]])
    p = pairs_lib.make_pairs(rewards, strategy="best_vs_worst", mask=mask)
    assert _as_set(p) == {(0, 0, 3), (1, 0, 1)}
    single = pairs_lib.make_pairs(rewards, strategy="tournament", mask=np.eye(2, 4, dtype=bool))
    assert len(single) == 0 and single.num_groups_without_pair == 2


@pytest.mark.parametrize("strategy", pairs_lib.STRATEGIES)
def test_deterministic_for_a_seed(strategy):
    rewards = np.random.default_rng(0).integers(0, 4, size=(20, 6)).astype(float)  # many ties
    a = pairs_lib.make_pairs(rewards, strategy=strategy, seed=7, max_pairs_per_group=3)
    b = pairs_lib.make_pairs(rewards, strategy=strategy, seed=7, max_pairs_per_group=3)
    for f in ("group", "chosen", "rejected"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert a.num_ties == b.num_ties
    assert np.all(np.bincount(a.group, minlength=20) <= 3)
    _check_labels(a, rewards)


def test_bad_input_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"rewards\[1, 2\]"):
        pairs_lib.make_pairs(np.array([[0.0, 1.0, 2.0], [0.0, 1.0, np.nan]]), strategy="random")
    with pytest.raises(ValueError, match="unknown pairing strategy"):
        pairs_lib.make_pairs(np.zeros((1, 2)), strategy="swiss")
    with pytest.raises(ValueError, match="2-D"):
        pairs_lib.make_pairs(np.zeros(4), strategy="random")
    with pytest.raises(ValueError, match="margin"):
        pairs_lib.make_pairs(np.zeros((1, 2)), strategy="random", margin=-1.0)
    with pytest.raises(ValueError, match="mask shape"):
        pairs_lib.make_pairs(np.zeros((1, 2)), strategy="random", mask=np.ones((1, 3), bool))
