"""RSO's statistical rejection sampler (alignment/learners/rso.py) on a categorical toy.

With 5 actions, known pi_sft and rewards r, the accepted samples must follow
pi_r ∝ pi_sft * exp(r / beta). A chi-square goodness-of-fit against pi_r must pass, and the
same check must reject plain pi_sft samples (so the test can fail).
"""

import numpy as np
import pytest

from alignment.learners import rso

PI_SFT = np.array([0.40, 0.25, 0.15, 0.12, 0.08])
REWARD = np.array([0.0, 0.5, 1.0, 1.5, 2.0])
# chi-square critical value, 4 degrees of freedom, p = 0.001
CHI2_4DF_P001 = 18.467


def _toy(num_prompts, num_candidates, seed):
    rng = np.random.default_rng(seed)
    actions_GxN = rng.choice(len(PI_SFT), size=(num_prompts, num_candidates), p=PI_SFT)
    return actions_GxN, REWARD[actions_GxN]


def _chi2(samples, p):
    counts = np.bincount(samples, minlength=len(p))
    expected = p * samples.size
    return float(np.sum((counts - expected) ** 2 / expected))


def _accepted_actions(beta, *, num_prompts=1500, num_candidates=64, num_accepted=2, seed=0):
    actions, rewards = _toy(num_prompts, num_candidates, seed)
    acc = rso.rejection_sample(rewards, num_accepted=num_accepted, beta=beta, seed=seed + 1)
    assert acc.index.shape == (num_prompts, num_accepted)
    return np.take_along_axis(actions, acc.index, axis=1).reshape(-1), acc


def test_accepted_samples_follow_pi_sft_times_exp_reward_over_beta():
    beta = 1.0
    target = rso.target_distribution(PI_SFT, REWARD, beta)
    np.testing.assert_allclose(
        target, PI_SFT * np.exp(REWARD / beta) / np.sum(PI_SFT * np.exp(REWARD / beta))
    )
    accepted, acc = _accepted_actions(beta)
    chi2 = _chi2(accepted, target)
    assert chi2 < CHI2_4DF_P001, (chi2, np.bincount(accepted, minlength=5) / accepted.size, target)
    # control: the proposal itself (the first candidates, i.e. pi_sft samples) fails the same check
    actions, _ = _toy(1500, 64, 0)
    assert _chi2(actions[:, :2].reshape(-1), target) > 10 * CHI2_4DF_P001
    # and the accepted samples fail a check against pi_sft
    assert _chi2(accepted, PI_SFT) > 10 * CHI2_4DF_P001
    assert 0 < acc.first_round_rate < 1 and acc.rounds.max() <= 2


def test_smaller_beta_tilts_further():
    target = rso.target_distribution(PI_SFT, REWARD, 0.5)
    accepted, _ = _accepted_actions(0.5, num_candidates=128)
    assert _chi2(accepted, target) < CHI2_4DF_P001
    means = [REWARD[_accepted_actions(b, num_prompts=400)[0]].mean() for b in (4.0, 1.0, 0.25)]
    assert means[0] < means[1] < means[2]


def test_beta_to_infinity_accepts_like_pi_sft():
    actions, rewards = _toy(200, 16, 3)
    acc = rso.rejection_sample(rewards, num_accepted=5, beta=np.inf, seed=0)
    # every candidate passes in round one; the loop keeps the first M in candidate order
    np.testing.assert_array_equal(acc.index, np.tile(np.arange(5), (200, 1)))
    assert acc.first_round_rate == 1.0 and np.all(acc.rounds == 1)
    accepted, _ = _accepted_actions(1e6)
    assert _chi2(accepted, PI_SFT) < CHI2_4DF_P001


def test_beta_to_zero_picks_the_argmax_then_the_next_best():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(50, 10))
    acc = rso.rejection_sample(rewards, num_accepted=3, beta=1e-9, seed=0)
    np.testing.assert_array_equal(acc.index, np.argsort(-rewards, axis=1)[:, :3])
    assert np.all(acc.rounds == 3)


def test_without_replacement_and_deterministic_for_a_seed():
    _, rewards = _toy(100, 12, 5)
    a = rso.rejection_sample(rewards, num_accepted=12, beta=0.3, seed=9)
    b = rso.rejection_sample(rewards, num_accepted=12, beta=0.3, seed=9)
    np.testing.assert_array_equal(a.index, b.index)
    # accepting all N returns a permutation of the candidates
    np.testing.assert_array_equal(np.sort(a.index, axis=1), np.tile(np.arange(12), (100, 1)))
    c = rso.rejection_sample(rewards, num_accepted=4, beta=0.3, seed=10)
    assert not np.array_equal(a.index[:, :4], c.index)


def test_mask_limits_the_pool():
    rewards = np.array([[5.0, 1.0, 9.0, 0.0]])
    mask = np.array([[True, True, False, True]])
    acc = rso.rejection_sample(rewards, num_accepted=3, beta=1e-9, mask=mask)
    assert acc.index.tolist() == [[0, 1, 3]]


def test_bad_input_errors():
    with pytest.raises(ValueError, match="num_accepted=5 exceeds the 4 candidate"):
        rso.rejection_sample(np.zeros((2, 4)), num_accepted=5, beta=1.0)
    with pytest.raises(ValueError, match=r"rewards\[1, 2\].*prompt 1, candidate 2"):
        rso.rejection_sample(np.array([[0.0, 1, 2], [0, 1, np.nan]]), num_accepted=1, beta=1.0)
    for beta in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="beta must be > 0"):
            rso.rejection_sample(np.zeros((1, 4)), num_accepted=1, beta=beta)
    with pytest.raises(ValueError, match="num_accepted must be an int"):
        rso.rejection_sample(np.zeros((1, 4)), num_accepted=0, beta=1.0)
    with pytest.raises(ValueError, match="2-D"):
        rso.rejection_sample(np.zeros(4), num_accepted=1, beta=1.0)
