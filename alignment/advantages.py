"""Advantages and returns as pure jax.numpy: GAE, GRPO group normalisation, RLOO, whitening,
token-reward assembly and Monte-Carlo step advantages. No Flax, no model.

Per-token arrays are [B, T] over generated tokens with a 0/1 `mask`; masked positions get
advantage 0 and never feed a value into valid ones (they are selected away, so NaN or
garbage there is harmless).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from alignment.losses import _checks
from alignment.losses import kl as kl_lib

Array = Any


def _per_token(name: str, x: Any, shape: tuple[int, ...] | None = None) -> jax.Array:
    arr = _checks.f32(name, x)
    _checks.check_rank(name, arr, 2)
    if shape is not None and arr.shape != shape:
        raise ValueError(f"`{name}` must have shape {shape}, got {arr.shape}")
    return arr


def gae(
    *,
    rewards: Array,
    values: Array,
    mask: Array,
    gamma: float = 1.0,
    lam: float = 0.95,
    bootstrap_values: Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation (Schulman et al., 2016). Over the valid tokens of a row
    (masked positions are skipped, so left/right padding and gaps are all fine):

    `delta_t = r_t + gamma*V_next - V_t`, `A_t = delta_t + gamma*lam*A_next`, where `next` is the
    next valid token, and after the last one `V_next = bootstrap_values` (default 0: the
    response ended) and `A_next = 0`. Returns `(advantages, returns = A + V)`, both [B, T],
    zero at masked positions.
    """
    _checks.check_scalar("gamma", gamma, low=0.0, high=1.0)
    _checks.check_scalar("lam", lam, low=0.0, high=1.0)
    r = _per_token("rewards", rewards)
    v = _per_token("values", values, r.shape)
    m = _checks.mask_f32("mask", mask)
    _checks.check_same_shape(rewards=r, mask=m)
    _checks.check_finite("rewards", rewards, where=mask)
    _checks.check_finite("values", values, where=mask)
    b = r.shape[0]
    if bootstrap_values is None:
        v_last = jnp.zeros((b,), jnp.float32)
    else:
        v_last = _checks.f32("bootstrap_values", bootstrap_values)
        if v_last.shape != (b,):
            raise ValueError(f"`bootstrap_values` must have shape ({b},), got {v_last.shape}")
        _checks.check_finite("bootstrap_values", bootstrap_values)

    def step(carry, xs):
        next_v, next_a = carry
        r_t, v_t, m_t = xs
        valid = m_t != 0
        a_t = r_t + gamma * next_v - v_t + gamma * lam * next_a
        new_carry = (jnp.where(valid, v_t, next_v), jnp.where(valid, a_t, next_a))
        return new_carry, jnp.where(valid, a_t, 0.0)

    init = (v_last, jnp.zeros((b,), jnp.float32))
    _, adv_TxB = jax.lax.scan(step, init, (r.T, v.T, m.T), reverse=True)
    adv = adv_TxB.T
    returns = jnp.where(m != 0, adv + v, 0.0)
    return adv, returns


def _groups(rewards: Any, group_size: int, *, min_size: int) -> jax.Array:
    r = _checks.f32("rewards", rewards)
    _checks.check_rank("rewards", r, 1)
    if not isinstance(group_size, int) or group_size < min_size:
        raise ValueError(f"`group_size` must be an int >= {min_size}, got {group_size!r}")
    if r.shape[0] % group_size:
        raise ValueError(
            f"rewards of length {r.shape[0]} do not split into groups of "
            f"{group_size} (completions of one prompt must be contiguous)"
        )
    _checks.check_finite("rewards", rewards)
    return r.reshape(-1, group_size)


def group_normalized(
    *, rewards: Array, group_size: int, use_std: bool = True, eps: float = 1e-4, ddof: int = 1
) -> jax.Array:
    """GRPO advantages (Shao et al., 2024): `A_i = (r_i - mean_g r) / (std_g r + eps)` within each
    group of `group_size` contiguous completions of one prompt, [N] -> [N].

    `use_std=False` keeps only the mean baseline (Dr. GRPO, Liu et al., 2025). `ddof=1` is the
    unbiased std (as torch's default used by TRL); groups with equal rewards give A = 0.
    """
    _checks.check_scalar("eps", eps, low=0.0)
    g = _groups(rewards, group_size, min_size=2 if use_std and ddof else 1)
    centred = g - jnp.mean(g, axis=1, keepdims=True)
    if use_std:
        centred = centred / (jnp.std(g, axis=1, ddof=ddof, keepdims=True) + eps)
    return centred.reshape(-1)


def rloo(*, rewards: Array, group_size: int) -> jax.Array:
    """Leave-one-out baseline (Kool et al., 2019; Ahmadian et al., 2024):
    `A_i = r_i - mean_{j != i} r_j` within each group of contiguous completions, [N] -> [N]."""
    g = _groups(rewards, group_size, min_size=2)
    others = (jnp.sum(g, axis=1, keepdims=True) - g) / (group_size - 1)
    return (g - others).reshape(-1)


def whiten(
    x: Array, mask: Array | None = None, *, shift_mean: bool = True, eps: float = 1e-8
) -> jax.Array:
    """`(x - mean) / sqrt(var + eps)` with mean and (population) variance over the masked
    entries; `shift_mean=False` adds the mean back (scale only). Masked entries become 0."""
    arr = _checks.f32("x", x)
    m = jnp.ones_like(arr) if mask is None else _checks.mask_f32("mask", mask)
    _checks.check_same_shape(x=arr, mask=m)
    _checks.check_finite("x", x, where=mask)
    n = jnp.maximum(jnp.sum(m), 1.0)
    xm = jnp.where(m != 0, arr, 0.0)
    mean = jnp.sum(xm) / n
    var = jnp.sum(jnp.where(m != 0, (arr - mean) ** 2, 0.0)) / n
    out = (arr - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return jnp.where(m != 0, out, 0.0)


def last_token_index(mask: Array) -> jax.Array:
    """Index of the last valid token of each row [B] (0 for rows without valid tokens)."""
    m = jnp.asarray(mask) != 0
    t = m.shape[1]
    idx = t - 1 - jnp.argmax(m[:, ::-1], axis=1)
    return jnp.where(jnp.any(m, axis=1), idx, 0)


def token_rewards(
    *,
    mask: Array,
    terminal_rewards: Array | None = None,
    per_token_rewards: Array | None = None,
    logps: Array | None = None,
    ref_logps: Array | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k1",
) -> tuple[jax.Array, jax.Array]:
    """Per-token rewards for PPO-style GAE (Ziegler et al., 2019; Ouyang et al., 2022):

    `R_t = per_token_rewards_t - kl_coef * KL_t + [t = last valid token] * terminal_rewards`,
    with `KL_t` the `kl_estimator` estimate from `logps` and `ref_logps`. Returns
    `(rewards [B, T], kl [B, T])`, zero at masked positions. A row without valid tokens and a
    terminal reward is an error (eager) since its reward would be dropped.
    """
    m = _checks.mask_f32("mask", mask)
    _checks.check_rank("mask", m, 2)
    _checks.check_scalar("kl_coef", kl_coef, low=0.0)
    total = jnp.zeros_like(m)
    if per_token_rewards is not None:
        ptr = _per_token("per_token_rewards", per_token_rewards, m.shape)
        _checks.check_finite("per_token_rewards", per_token_rewards, where=mask)
        total = total + jnp.where(m != 0, ptr, 0.0)
    kl = jnp.zeros_like(m)
    if logps is not None or ref_logps is not None:
        lp = _per_token("logps", logps, m.shape)
        ref = _per_token("ref_logps", ref_logps, m.shape)
        _checks.check_finite("logps", logps, where=mask)
        _checks.check_finite("ref_logps", ref_logps, where=mask)
        kl = kl_lib.kl_estimate(
            jnp.where(m != 0, lp, 0.0), jnp.where(m != 0, ref, 0.0), kl_estimator
        )
        total = total - kl_coef * kl
    elif not _checks.is_traced(kl_coef) and float(kl_coef) != 0.0:
        raise ValueError(f"kl_coef={float(kl_coef)} needs `logps` and `ref_logps`")
    if terminal_rewards is not None:
        tr = _checks.f32("terminal_rewards", terminal_rewards)
        if tr.shape != m.shape[:1]:
            raise ValueError(f"`terminal_rewards` must have shape {m.shape[:1]}, got {tr.shape}")
        _checks.check_finite("terminal_rewards", terminal_rewards)
        if not _checks.is_traced(mask):
            empty = ~jnp.any(m != 0, axis=1)
            if bool(jnp.any(empty)):
                raise ValueError(
                    f"row {int(jnp.argmax(empty))} of `mask` has no valid token to carry "
                    "its terminal reward"
                )
        one_hot = jax.nn.one_hot(last_token_index(m), m.shape[1], dtype=jnp.float32) * m
        total = total + one_hot * tr[:, None]
    return total, jnp.where(m != 0, kl, 0.0)


def step_advantages(
    *, step_values: Array, step_mask: Array, initial_values: Array
) -> tuple[jax.Array, jax.Array]:
    """Per-step advantages from Monte-Carlo step values (Setlur et al., 2024, per-step
    negatives): `A_i = Q_i - Q_{i-1}` with `Q_0 = initial_values` [B] (value of the bare prompt)
    over the valid steps of `step_values` [B, S]. Also returns the critical step of each row,
    the first valid step with the lowest Q (-1 for rows without steps)."""
    q = _per_token("step_values", step_values)
    m = _checks.mask_f32("step_mask", step_mask)
    _checks.check_same_shape(step_values=q, step_mask=m)
    q0 = _checks.f32("initial_values", initial_values)
    if q0.shape != q.shape[:1]:
        raise ValueError(f"`initial_values` must have shape {q.shape[:1]}, got {q0.shape}")
    _checks.check_finite("step_values", step_values, where=step_mask)
    _checks.check_finite("initial_values", initial_values)

    # Carry the last valid Q forward so gaps in the mask difference against the right step.
    def step(prev, xs):
        q_i, m_i = xs
        valid = m_i != 0
        return jnp.where(valid, q_i, prev), jnp.where(valid, q_i - prev, 0.0)

    _, adv_SxB = jax.lax.scan(step, q0, (q.T, m.T))
    masked_q = jnp.where(m != 0, q, jnp.inf)
    critical = jnp.where(jnp.any(m != 0, axis=1), jnp.argmin(masked_q, axis=1), -1)
    return adv_SxB.T, critical


def best_of_k_values(*, successes: Array, k: int) -> jax.Array:
    """Monte-Carlo value of a prefix under best-of-K rollouts (Setlur et al., 2024, "RL on
    incorrect synthetic data scales the efficiency of LLM math reasoning by eight-fold", per-step
    negatives with K = 5): `Q = P(at least one of K rollouts from the prefix succeeds)
    = 1 - (1 - p)^K`, p the policy's success rate from the prefix.

    `successes` [..., M] holds 0/1 outcomes of M >= k rollouts per prefix (e.g. [steps, M]).
    With c successes the unbiased estimate is `1 - C(M - c, k) / C(M, k)` (the pass@k estimator
    of Chen et al., 2021); with M == k it is the max over the rollouts. Returns float32 [...].
    """
    s = _checks.f32("successes", successes)
    if s.ndim < 1:
        raise ValueError(f"`successes` must have a rollout axis [..., M], got shape {s.shape}")
    _checks.check_finite("successes", successes)
    if not _checks.is_traced(successes) and not bool(jnp.all((s == 0) | (s == 1))):
        raise ValueError("`successes` must hold 0/1 rollout outcomes")
    m = s.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= m:
        raise ValueError(f"`k` must be an int in [1, M={m}] (rollouts per prefix), got {k!r}")
    failures = m - jnp.sum(s, axis=-1)
    j = jnp.arange(k, dtype=jnp.float32)
    # C(M-c, k)/C(M, k) = prod_j (M-c-j)/(M-j); a factor hits 0 once fewer than k failures remain
    all_fail = jnp.prod(jnp.clip((failures[..., None] - j) / (m - j), 0.0, 1.0), axis=-1)
    return 1.0 - all_fail


def first_pit(
    *, step_values: Array, step_mask: Array, initial_values: Array
) -> tuple[jax.Array, jax.Array]:
    """Critical step of per-step negatives (Setlur et al., 2024): the first valid step with the
    lowest Q (ties -> the earliest), and whether it is a pit at all: its advantage
    `Q_crit - Q_{crit-1}` (`Q_0 = initial_values`) is negative. Only a row whose Q never drops
    below its start before the lowest point (e.g. all zero: the policy never succeeds) has none.
    `step_values`/`step_mask` [B, S], `initial_values` [B]. Returns `(critical [B] int, -1 for
    rows without steps; has_pit [B] bool)`. The advantages themselves: `step_advantages`."""
    adv, critical = step_advantages(
        step_values=step_values, step_mask=step_mask, initial_values=initial_values
    )
    a_crit = jnp.take_along_axis(adv, jnp.maximum(critical, 0)[:, None], axis=1)[:, 0]
    return critical, (critical >= 0) & (a_crit < 0)
