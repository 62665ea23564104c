"""Policy-gradient objectives on sampled tokens: GRPO family (incl. DAPO, Dr. GRPO, GSPO),
PPO (clipped policy and value losses), and sequence-level REINFORCE / RLOO.

Inputs are per-token arrays [B, T] over the generated tokens: `logps` (current policy,
differentiated), `old_logps` (the sampling policy; None = on-policy, ratio 1), a 0/1 `mask`
of response tokens, `advantages` ([B] broadcast over tokens, or [B, T]), optional
`ref_logps` with `beta` and `kl_estimator`. Padding positions may hold anything finite or
not: they are selected away with `where` before any exp, so they never produce NaN.

Aggregations of a per-token loss `l` (docs/methods.md section 3):
  grpo     mean_b( sum_t l*m / sum_t m )      (Shao et al., 2024)
  bnpo     sum l*m / sum m                     (token mean over the batch)
  dr_grpo  sum l*m / (B * max_len)             (Liu et al., 2025, "Dr. GRPO")
  dapo     sum l*m / num_tokens                (Yu et al., 2025; num_tokens = response tokens
                                                of the whole generation batch, passed in)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from alignment.losses import _checks
from alignment.losses import kl as kl_lib
from alignment.losses._registry import register

Array = Any
sg = jax.lax.stop_gradient

AGGREGATIONS = ("grpo", "bnpo", "dr_grpo", "dapo")


def _inputs(loss, logps, old_logps, mask, advantages, ref_logps):
    try:
        lp = _checks.f32("logps", logps)
        _checks.check_rank("logps", lp, 2)
        m = _checks.mask_f32("mask", mask)
        _checks.check_same_shape(logps=lp, mask=m)
        if old_logps is None:
            old = sg(lp)
        else:
            old = _checks.f32("old_logps", old_logps)
            _checks.check_same_shape(logps=lp, old_logps=old)
        adv = _checks.f32("advantages", advantages)
        if adv.shape == lp.shape[:1]:
            adv = jnp.broadcast_to(adv[:, None], lp.shape)
        elif adv.shape != lp.shape:
            raise ValueError(
                f"`advantages` must be [B]={lp.shape[:1]} or [B, T]={lp.shape}, got {adv.shape}"
            )
        ref = None
        if ref_logps is not None:
            ref = _checks.f32("ref_logps", ref_logps)
            _checks.check_same_shape(logps=lp, ref_logps=ref)
        _checks.check_finite("logps", logps, where=mask)
        _checks.check_finite("old_logps", old_logps, where=mask)
        _checks.check_finite("ref_logps", ref_logps, where=mask)
        adv_where = mask if jnp.ndim(advantages) == 2 else None
        _checks.check_finite("advantages", advantages, where=adv_where)
    except (ValueError, TypeError) as e:
        raise type(e)(f"loss {loss!r}: {e}") from None
    return lp, old, m, adv, ref


def _masked(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.where(mask != 0, x, 0.0)


def _token_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(_masked(x, mask)) / jnp.maximum(jnp.sum(mask), 1.0)


def aggregate(
    per_token_loss: jax.Array,
    mask: jax.Array,
    aggregation: str,
    *,
    num_tokens: Array | None = None,
    max_len: int | None = None,
) -> jax.Array:
    """Reduce a [B, T] per-token loss to a scalar (see the module docstring).

    Rows without response tokens count as 0 in `grpo` (their length is clamped to 1).
    """
    _checks.check_choice("aggregation", aggregation, AGGREGATIONS)
    total = _masked(per_token_loss, mask)
    if aggregation == "grpo":
        lengths = jnp.maximum(jnp.sum(mask, axis=1), 1.0)
        return jnp.mean(jnp.sum(total, axis=1) / lengths)
    if aggregation == "bnpo":
        return jnp.sum(total) / jnp.maximum(jnp.sum(mask), 1.0)
    if aggregation == "dr_grpo":
        max_len = per_token_loss.shape[1] if max_len is None else max_len
        _checks.check_scalar("max_len", max_len, low=0, low_open=True)
        return jnp.sum(total) / (per_token_loss.shape[0] * max_len)
    if num_tokens is None:
        raise ValueError(
            "aggregation 'dapo' needs `num_tokens`: the response-token count of the "
            "whole generation batch (all micro-batches of the step)"
        )
    _checks.check_scalar("num_tokens", num_tokens, low=0, low_open=True)
    return jnp.sum(total) / num_tokens


def entropy_from_logits(logits: Array) -> jax.Array:
    """Per-position entropy `-sum_v p log p` of softmax(logits) over the last axis, float32."""
    logits = jnp.asarray(logits, jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def _clipped_surrogate(log_ratio, adv, mask, epsilon_low, epsilon_high, dual_clip):
    """Per-token `max(-r*A, -clip(r, 1-el, 1+eh)*A)` (PPO, Schulman 2017), optionally capped at
    `-c*A` for A < 0 (dual clip, Ye et al., 2020). Returns the loss and clip statistics."""
    _checks.check_scalar("epsilon_low", epsilon_low, low=0.0, high=1.0)
    _checks.check_scalar("epsilon_high", epsilon_high, low=0.0)
    ratio = jnp.exp(log_ratio)
    clipped = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    loss = jnp.maximum(-adv * ratio, -adv * clipped)
    low = (ratio < 1.0 - epsilon_low) & (adv < 0)
    high = (ratio > 1.0 + epsilon_high) & (adv > 0)
    stats = {
        "clip_ratio_low": _token_mean(low.astype(jnp.float32), mask),
        "clip_ratio_high": _token_mean(high.astype(jnp.float32), mask),
        "clip_fraction": _token_mean((low | high).astype(jnp.float32), mask),
        "ratio_mean": _token_mean(ratio, mask),
    }
    if dual_clip is not None:
        _checks.check_scalar("dual_clip", dual_clip, low=1.0, low_open=True)
        cap = -adv * dual_clip
        dual = (adv < 0) & (loss > cap)
        loss = jnp.where(adv < 0, jnp.minimum(loss, cap), loss)
        stats["dual_clip_fraction"] = _token_mean(dual.astype(jnp.float32), mask)
    return loss, stats


def _kl_term(loss, logps, ref, mask, beta, kl_estimator):
    _checks.check_scalar("beta", beta, low=0.0)
    _checks.check_choice("kl_estimator", kl_estimator, kl_lib.ESTIMATORS)
    if ref is None:
        if not _checks.is_traced(beta) and float(beta) != 0.0:
            raise ValueError(f"loss {loss!r}: beta={float(beta)} needs `ref_logps`")
        return None
    # Selecting padding to equal log-probs first keeps exp() in k3 away from garbage values.
    return kl_lib.kl_estimate(_masked(logps, mask), _masked(ref, mask), kl_estimator)


def _entropy_term(entropy, mask, entropy_coef):
    _checks.check_scalar("entropy_coef", entropy_coef)
    if entropy is None:
        if not _checks.is_traced(entropy_coef) and float(entropy_coef) != 0.0:
            raise ValueError(
                f"entropy_coef={float(entropy_coef)} needs `entropy` ([B, T], e.g. "
                "from entropy_from_logits)"
            )
        return None
    ent = _checks.f32("entropy", entropy)
    _checks.check_same_shape(mask=mask, entropy=ent)
    _checks.check_finite("entropy", entropy, where=mask)
    return ent


def _add_kl_and_entropy(
    name, per_token, metrics, lp, ref, m, beta, kl_estimator, entropy, entropy_coef
):
    """`per_token + beta*KL - entropy_coef*H`, recording `kl` / `entropy` in `metrics` when used."""
    kl = _kl_term(name, lp, ref, m, beta, kl_estimator)
    if kl is not None:
        per_token = per_token + beta * kl
        metrics["kl"] = _token_mean(kl, m)
    ent = _entropy_term(entropy, m, entropy_coef)
    if ent is not None:
        per_token = per_token - entropy_coef * ent
        metrics["entropy"] = _token_mean(ent, m)
    return per_token


@register("grpo", "policy_gradient")
def grpo(
    *,
    logps: Array,
    mask: Array,
    advantages: Array,
    old_logps: Array | None = None,
    ref_logps: Array | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    dual_clip: float | None = None,
    importance_level: str = "token",
    aggregation: str = "grpo",
    num_tokens: Array | None = None,
    max_len: int | None = None,
    entropy: Array | None = None,
    entropy_coef: float = 0.0,
):
    """Clipped-surrogate policy loss of the GRPO family:

    `l_t = max(-r_t*A_t, -clip(r_t, 1-eps_low, 1+eps_high)*A_t) + beta*KL_t - entropy_coef*H_t`,
    aggregated by `aggregation`. GRPO (Shao et al., 2024): `aggregation='grpo'`, k3, beta>0.
    DAPO (Yu et al., 2025): `epsilon_high=0.28`, `'dapo'`/`'bnpo'`, beta=0. Dr. GRPO:
    `'dr_grpo'` with mean-only advantages. GSPO (Zheng et al., 2025):
    `importance_level='sequence'`, `r = exp(mean_t(logp - old_logp))` per sequence, applied per
    token with the token's own gradient (`sg(r) * pi_t/sg(pi_t)`, GSPO-token), eps ~ 3e-4/4e-4.
    `dual_clip=c > 1` caps the loss of negative-advantage tokens at `-c*A`.
    """
    _checks.check_choice("importance_level", importance_level, ("token", "sequence"))
    _checks.check_choice("aggregation", aggregation, AGGREGATIONS)
    lp, old, m, adv, ref = _inputs("grpo", logps, old_logps, mask, advantages, ref_logps)
    log_ratio = _masked(lp - old, m)
    if importance_level == "sequence":
        seq = jnp.sum(log_ratio, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
        log_ratio = _masked(lp - sg(lp), m) + sg(seq)[:, None]
    pg, stats = _clipped_surrogate(log_ratio, adv, m, epsilon_low, epsilon_high, dual_clip)
    per_token = pg
    metrics = dict(stats)
    metrics["policy_loss"] = aggregate(pg, m, aggregation, num_tokens=num_tokens, max_len=max_len)
    per_token = _add_kl_and_entropy(
        "grpo", per_token, metrics, lp, ref, m, beta, kl_estimator, entropy, entropy_coef
    )
    loss = aggregate(per_token, m, aggregation, num_tokens=num_tokens, max_len=max_len)
    metrics["per_token_loss"] = _masked(per_token, m)
    return loss, metrics


@register("ppo", "policy_gradient")
def ppo(
    *,
    logps: Array,
    mask: Array,
    advantages: Array,
    values: Array,
    old_values: Array,
    returns: Array,
    old_logps: Array | None = None,
    ref_logps: Array | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k1",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    dual_clip: float | None = None,
    value_clip: float = 0.2,
    vf_coef: float = 0.1,
    aggregation: str = "bnpo",
    num_tokens: Array | None = None,
    max_len: int | None = None,
    entropy: Array | None = None,
    entropy_coef: float = 0.0,
):
    """PPO (Schulman et al., 2017; RLHF form of Ouyang et al., 2022): clipped policy surrogate
    plus clipped value loss,

    `L = agg(l_pg + beta*KL - entropy_coef*H) + vf_coef * agg(0.5*max((v-R)**2,
    (v_old + clip(v - v_old, -value_clip, value_clip) - R)**2))`.
    Usually the KL is folded into the reward (`advantages.token_rewards`) and beta = 0 here.
    `values`, `old_values`, `returns` are [B, T]; advantages [B, T] from `advantages.gae`.
    """
    _checks.check_choice("aggregation", aggregation, AGGREGATIONS)
    _checks.check_scalar("value_clip", value_clip, low=0.0)
    _checks.check_scalar("vf_coef", vf_coef, low=0.0)
    lp, old, m, adv, ref = _inputs("ppo", logps, old_logps, mask, advantages, ref_logps)
    try:
        v = _checks.f32("values", values)
        v_old = _checks.f32("old_values", old_values)
        ret = _checks.f32("returns", returns)
        _checks.check_same_shape(logps=lp, values=v, old_values=v_old, returns=ret)
        for name, raw in (("values", values), ("old_values", old_values), ("returns", returns)):
            _checks.check_finite(name, raw, where=mask)
    except (ValueError, TypeError) as e:
        raise type(e)(f"loss 'ppo': {e}") from None
    pg, stats = _clipped_surrogate(
        _masked(lp - old, m), adv, m, epsilon_low, epsilon_high, dual_clip
    )
    per_token = pg
    metrics = dict(stats)
    per_token = _add_kl_and_entropy(
        "ppo", per_token, metrics, lp, ref, m, beta, kl_estimator, entropy, entropy_coef
    )
    v, v_old, ret = _masked(v, m), _masked(v_old, m), _masked(ret, m)
    v_clipped = v_old + jnp.clip(v - v_old, -value_clip, value_clip)
    vf1, vf2 = (v - ret) ** 2, (v_clipped - ret) ** 2
    vf_per_token = 0.5 * jnp.maximum(vf1, vf2)
    policy_loss = aggregate(per_token, m, aggregation, num_tokens=num_tokens, max_len=max_len)
    value_loss = aggregate(vf_per_token, m, aggregation, num_tokens=num_tokens, max_len=max_len)
    metrics.update(
        policy_loss=policy_loss,
        value_loss=value_loss,
        value_clip_fraction=_token_mean((vf2 > vf1).astype(jnp.float32), m),
        per_token_loss=_masked(per_token, m),
        per_token_value_loss=_masked(vf_per_token, m),
    )
    return policy_loss + vf_coef * value_loss, metrics


def _sequence_pg(
    loss,
    *,
    logps,
    mask,
    advantages,
    old_logps,
    ref_logps,
    beta,
    kl_estimator,
    epsilon_low,
    epsilon_high,
    aggregation,
    num_tokens,
    max_len,
    entropy,
    entropy_coef,
):
    _checks.check_choice("aggregation", aggregation, ("sequence",) + AGGREGATIONS)
    lp, old, m, adv, ref = _inputs(loss, logps, old_logps, mask, advantages, ref_logps)
    if jnp.ndim(advantages) != 1:
        raise ValueError(
            f"loss {loss!r}: `advantages` must be one per sequence, [B]; got shape "
            f"{jnp.shape(advantages)}"
        )
    a = adv[:, 0]
    log_ratio = jnp.sum(_masked(lp - old, m), axis=1)
    ratio = jnp.exp(log_ratio)
    seq_loss = -a * ratio
    metrics = {"ratio_mean": jnp.mean(ratio)}
    if epsilon_low is not None or epsilon_high is not None:
        if epsilon_low is None or epsilon_high is None:
            raise ValueError(f"loss {loss!r}: give both epsilon_low and epsilon_high, or neither")
        _checks.check_scalar("epsilon_low", epsilon_low, low=0.0, high=1.0)
        _checks.check_scalar("epsilon_high", epsilon_high, low=0.0)
        seq_loss = jnp.maximum(seq_loss, -a * jnp.clip(ratio, 1 - epsilon_low, 1 + epsilon_high))
        clipped = ((ratio < 1 - epsilon_low) & (a < 0)) | ((ratio > 1 + epsilon_high) & (a > 0))
        metrics["clip_fraction"] = jnp.mean(clipped.astype(jnp.float32))
    kl = _kl_term(loss, lp, ref, m, beta, kl_estimator)
    if kl is not None:
        seq_kl = jnp.sum(_masked(kl, m), axis=1)
        seq_loss = seq_loss + beta * seq_kl
        metrics["kl"] = jnp.mean(seq_kl)
    ent = _entropy_term(entropy, m, entropy_coef)
    if ent is not None:
        seq_ent = jnp.sum(_masked(ent, m), axis=1)
        seq_loss = seq_loss - entropy_coef * seq_ent
        metrics["entropy"] = _token_mean(ent, m)
    lengths = jnp.sum(m, axis=1)
    # Spread each sequence's loss evenly over its tokens so the token aggregations apply.
    per_token = m * (seq_loss / jnp.maximum(lengths, 1.0))[:, None]
    if aggregation == "sequence":
        total = jnp.mean(seq_loss)
    else:
        total = aggregate(per_token, m, aggregation, num_tokens=num_tokens, max_len=max_len)
    metrics.update(per_token_loss=per_token, sequence_loss=seq_loss)
    return total, metrics


@register("reinforce", "policy_gradient")
def reinforce(
    *,
    logps: Array,
    mask: Array,
    advantages: Array,
    old_logps: Array | None = None,
    ref_logps: Array | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k1",
    epsilon_low: float | None = None,
    epsilon_high: float | None = None,
    aggregation: str = "sequence",
    num_tokens: Array | None = None,
    max_len: int | None = None,
    entropy: Array | None = None,
    entropy_coef: float = 0.0,
):
    """Sequence-level REINFORCE (Williams, 1992): `l_b = -A_b * r_b + beta*sum_t KL_t`, with the
    sequence ratio `r_b = exp(sum_t (logp - old_logp))` (1 on-policy, so the gradient is
    `-A_b * grad sum_t logp`). Clipped like PPO at the sequence level when both epsilons are
    given. `aggregation='sequence'` averages `l_b` over sequences; a token aggregation spreads
    `l_b` evenly over the sequence's tokens first. Advantages are [B].
    """
    return _sequence_pg(
        "reinforce",
        logps=logps,
        mask=mask,
        advantages=advantages,
        old_logps=old_logps,
        ref_logps=ref_logps,
        beta=beta,
        kl_estimator=kl_estimator,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
        aggregation=aggregation,
        num_tokens=num_tokens,
        max_len=max_len,
        entropy=entropy,
        entropy_coef=entropy_coef,
    )


@register("rloo", "policy_gradient")
def rloo(
    *,
    logps: Array,
    mask: Array,
    advantages: Array,
    old_logps: Array | None = None,
    ref_logps: Array | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k1",
    epsilon_low: float | None = 0.2,
    epsilon_high: float | None = 0.2,
    aggregation: str = "sequence",
    num_tokens: Array | None = None,
    max_len: int | None = None,
    entropy: Array | None = None,
    entropy_coef: float = 0.0,
):
    """RLOO (Ahmadian et al., 2024): the sequence-level surrogate of `reinforce`, with the
    leave-one-out advantages of `alignment.advantages.rloo` (the KL usually folded into the
    reward) and, as in TRL's RLOO, a PPO clip on the sequence ratio (eps 0.2) for the
    multiple updates per batch.
    """
    return _sequence_pg(
        "rloo",
        logps=logps,
        mask=mask,
        advantages=advantages,
        old_logps=old_logps,
        ref_logps=ref_logps,
        beta=beta,
        kl_estimator=kl_estimator,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
        aggregation=aggregation,
        num_tokens=num_tokens,
        max_len=max_len,
        entropy=entropy,
        entropy_coef=entropy_coef,
    )
