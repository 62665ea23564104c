"""Advantages: GAE against a plain Python loop, group normalisation, RLOO, whitening, token
reward assembly and Monte-Carlo step advantages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignment import advantages as adv


def python_gae(rewards, values, mask, gamma, lam, bootstrap=None):
    """The textbook backward recursion, one row at a time, over valid tokens only."""
    out = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        next_v = 0.0 if bootstrap is None else bootstrap[b]
        next_a = 0.0
        for t in reversed(range(rewards.shape[1])):
            if not mask[b, t]:
                continue
            delta = rewards[b, t] + gamma * next_v - values[b, t]
            next_a = delta + gamma * lam * next_a
            next_v = values[b, t]
            out[b, t] = next_a
    return out


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.5, 1.0), st.floats(0.0, 1.0), st.booleans())
def test_gae_matches_python_loop(seed, gamma, lam, bootstrap):
    rng = np.random.default_rng(seed)
    rewards, values = rng.normal(0, 1, (3, 6)), rng.normal(0, 1, (3, 6))
    mask = (rng.uniform(size=(3, 6)) > 0.3).astype(np.float64)  # gaps and both paddings
    boot = rng.normal(0, 1, 3) if bootstrap else None
    a, ret = adv.gae(
        rewards=rewards, values=values, mask=mask, gamma=gamma, lam=lam, bootstrap_values=boot
    )
    want = python_gae(rewards, values, mask, gamma, lam, boot)
    np.testing.assert_allclose(np.asarray(a), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), (want + values) * mask, rtol=1e-4, atol=1e-5)


def test_gae_closed_forms_and_padding_garbage():
    rewards = np.array([[0.0, 0.0, 1.0, np.nan]])
    values = np.array([[0.5, 0.25, 0.75, np.inf]])
    mask = np.array([[1, 1, 1, 0]])
    # lam = 1, gamma = 1: A_t = (sum of future rewards) - V_t (Monte-Carlo return minus baseline).
    a, ret = adv.gae(rewards=rewards, values=values, mask=mask, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(np.asarray(a), [[0.5, 0.75, 0.25, 0.0]], atol=1e-6)
    np.testing.assert_allclose(np.asarray(ret), [[1.0, 1.0, 1.0, 0.0]], atol=1e-6)
    # lam = 0: one-step TD errors.
    a0, _ = adv.gae(rewards=rewards, values=values, mask=mask, gamma=1.0, lam=0.0)
    np.testing.assert_allclose(np.asarray(a0), [[-0.25, 0.5, 0.25, 0.0]], atol=1e-6)
    aj, _ = jax.jit(lambda r, v: adv.gae(rewards=r, values=v, mask=mask, gamma=1.0, lam=1.0))(
        jnp.asarray(rewards), jnp.asarray(values)
    )
    np.testing.assert_allclose(np.asarray(aj), np.asarray(a), atol=1e-6)


def test_group_normalized_and_rloo():
    r = np.array([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 5.0])
    g = r.reshape(2, 4)
    want = (g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-4)
    np.testing.assert_allclose(
        adv.group_normalized(rewards=r, group_size=4), want.ravel(), rtol=1e-5
    )
    np.testing.assert_allclose(
        adv.group_normalized(rewards=r, group_size=4, use_std=False),
        (g - g.mean(1, keepdims=True)).ravel(),
        rtol=1e-6,
    )
    loo = np.array([[g[i, j] - np.mean(np.delete(g[i], j)) for j in range(4)] for i in range(2)])
    np.testing.assert_allclose(adv.rloo(rewards=r, group_size=4), loo.ravel(), rtol=1e-6)
    # Equal rewards in a group give zero advantage, not NaN.
    np.testing.assert_array_equal(adv.group_normalized(rewards=np.ones(4), group_size=4), 0.0)
    with pytest.raises(ValueError, match="groups of 3"):
        adv.rloo(rewards=r, group_size=3)
    with pytest.raises(ValueError, match="group_size"):
        adv.rloo(rewards=r, group_size=1)
    with pytest.raises(ValueError, match="non-finite"):
        adv.group_normalized(rewards=np.array([1.0, np.nan]), group_size=2)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(-40, 40), min_size=6, max_size=6), st.integers(-12, 12))
def test_group_advantages_are_shift_invariant_and_centred(rewards, shift):
    # Quarter-integer values keep float32 sums exact, so the property holds to rounding only
    # (with arbitrary floats, a constant group's rounding noise is amplified by 1/eps).
    r, shift = np.array(rewards) / 4.0, shift / 4.0
    for fn in (
        lambda x: adv.group_normalized(rewards=x, group_size=3),
        lambda x: adv.rloo(rewards=x, group_size=3),
    ):
        a = np.asarray(fn(r))
        np.testing.assert_allclose(a, np.asarray(fn(r + shift)), atol=1e-4)
        np.testing.assert_allclose(a.reshape(2, 3).sum(1), 0.0, atol=1e-4)


def test_whiten():
    x = np.array([[1.0, 2.0, 3.0], [4.0, 100.0, np.nan]])
    m = np.array([[1, 1, 1], [1, 0, 0]])
    w = np.asarray(adv.whiten(x, m))
    vals = np.array([1.0, 2.0, 3.0, 4.0])
    want = (vals - vals.mean()) / np.sqrt(vals.var() + 1e-8)
    np.testing.assert_allclose(w[m == 1], want, rtol=1e-5)
    np.testing.assert_array_equal(w[m == 0], 0.0)
    kept = np.asarray(adv.whiten(x, m, shift_mean=False))
    np.testing.assert_allclose(kept[m == 1], want + vals.mean(), rtol=1e-5)


def test_token_rewards_assembly():
    mask = np.array([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    logps = np.array([[0.0, -1.0, -2.0, -1.0, 0.0], [-1.0, -1.0, 0.0, 0.0, 0.0]])
    ref = np.array([[0.0, -1.5, -1.0, -1.0, 0.0], [-2.0, -1.0, 0.0, 0.0, 0.0]])
    per_tok = np.full((2, 5), 0.1)
    r, kl = adv.token_rewards(
        mask=mask,
        terminal_rewards=np.array([1.0, -1.0]),
        per_token_rewards=per_tok,
        logps=logps,
        ref_logps=ref,
        kl_coef=0.5,
    )
    k1 = (logps - ref) * mask
    want = (0.1 - 0.5 * k1) * mask
    want[0, 3] += 1.0
    want[1, 1] += -1.0
    np.testing.assert_allclose(np.asarray(r), want, atol=1e-6)
    np.testing.assert_allclose(np.asarray(kl), k1, atol=1e-6)
    with pytest.raises(ValueError, match="row 1 .*no valid token"):
        adv.token_rewards(mask=np.array([[1, 0], [0, 0]]), terminal_rewards=np.ones(2))
    with pytest.raises(ValueError, match="kl_coef=0.5 needs"):
        adv.token_rewards(mask=mask, terminal_rewards=np.ones(2), kl_coef=0.5)


def test_step_advantages():
    q = np.array([[0.6, 0.2, 0.0, 0.9], [0.5, 0.5, 0.5, 0.5]])
    m = np.array([[1, 1, 1, 0], [1, 0, 1, 0]])
    a, crit = adv.step_advantages(step_values=q, step_mask=m, initial_values=np.array([0.5, 0.4]))
    np.testing.assert_allclose(
        np.asarray(a), [[0.1, -0.4, -0.2, 0.0], [0.1, 0.0, 0.0, 0.0]], atol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(crit), [2, 0])
