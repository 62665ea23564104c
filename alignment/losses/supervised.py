"""Supervised objectives on demonstrations: SFT, f-divergence-regularised SFT, IQ-Learn MLE.

Per-token inputs are [B, T] aligned with the targets: `logps[b, t] = log pi(y_t | y_<t, x)`,
`mask` 1 on response tokens (prompt and padding 0).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from alignment.losses import _checks
from alignment.losses._registry import register

Array = Any


def _token_inputs(loss, logps, mask):
    try:
        lp = _checks.f32("logps", logps)
        _checks.check_rank("logps", lp, 2)
        m = _checks.mask_f32("mask", mask)
        _checks.check_same_shape(logps=lp, mask=m)
        _checks.check_finite("logps", logps, where=mask)
    except (ValueError, TypeError) as e:
        raise type(e)(f"loss {loss!r}: {e}") from None
    return lp, m


def _reduce(per_token, m, loss, aggregation, segment_ids, normalizer):
    """Token mean (default), mean over sequences/packed segments of their token means, or a sum
    divided by a fixed `normalizer` (e.g. the token count of all gradient-accumulation steps)."""
    _checks.check_choice("aggregation", aggregation, ("token_mean", "sequence_mean"))
    x = jnp.where(m != 0, per_token, 0.0)
    if normalizer is not None:
        if aggregation != "token_mean":
            raise ValueError(
                f"loss {loss!r}: `normalizer` only applies to aggregation='token_mean'"
            )
        _checks.check_scalar("normalizer", normalizer, low=0.0, low_open=True)
        return jnp.sum(x) / normalizer
    if aggregation == "token_mean":
        return jnp.sum(x) / jnp.maximum(jnp.sum(m), 1.0)
    if segment_ids is None:
        per_seq = jnp.sum(x, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
        has_tokens = (jnp.sum(m, axis=1) > 0).astype(jnp.float32)
        return jnp.sum(per_seq) / jnp.maximum(jnp.sum(has_tokens), 1.0)
    seg = jnp.asarray(segment_ids)
    if seg.shape != m.shape:
        raise ValueError(f"loss {loss!r}: segment_ids shape {seg.shape} != mask shape {m.shape}")
    b, t = m.shape
    # One bucket per (row, segment id); ids within a row are < t + 1 for packed rows.
    keys = (jnp.arange(b)[:, None] * (t + 1) + jnp.clip(seg, 0, t)).reshape(-1)
    sums = jax.ops.segment_sum(x.reshape(-1), keys, num_segments=b * (t + 1))
    counts = jax.ops.segment_sum(m.reshape(-1), keys, num_segments=b * (t + 1))
    present = (counts > 0).astype(jnp.float32)
    return jnp.sum(sums / jnp.maximum(counts, 1.0)) / jnp.maximum(jnp.sum(present), 1.0)


@register("sft", "supervised")
def sft(
    *,
    logps: Array,
    mask: Array,
    aggregation: str = "token_mean",
    segment_ids: Array | None = None,
    normalizer: float | None = None,
):
    """SFT: token-mean negative log-likelihood over response tokens, `-sum(m*logp) / sum(m)`.

    Packing-aware: the token mean does not depend on how sequences are packed into rows;
    `aggregation='sequence_mean'` averages per-sequence token means, sequences given by
    `segment_ids` [B, T] when rows are packed (else one per row).
    """
    lp, m = _token_inputs("sft", logps, mask)
    nll_t = -lp
    loss = _reduce(nll_t, m, "sft", aggregation, segment_ids, normalizer)
    token_nll = jnp.sum(jnp.where(m != 0, nll_t, 0.0)) / jnp.maximum(jnp.sum(m), 1.0)
    return loss, {
        "nll": token_nll,
        "perplexity": jnp.exp(token_nll),
        "num_tokens": jnp.sum(m),
        "per_token_loss": jnp.where(m != 0, nll_t, 0.0),
    }


DIVERGENCES = ("none", "kl", "reverse_kl", "chi2", "hellinger", "js")


def f_divergence_penalty(log_ratio: jax.Array, divergence: str) -> jax.Array:
    """Pointwise `f(rho)` for `rho = exp(log_ratio)`, with generators normalised so that
    `f(1) = f'(1) = 0` (hence f >= 0, minimum at pi = ref):

    kl `rho*log(rho) - rho + 1`; reverse_kl `rho - 1 - log(rho)`; chi2 (Pearson) `(rho-1)**2`;
    hellinger `(sqrt(rho) - 1)**2`; js `rho*log(rho) - (1+rho)*log((1+rho)/2)`; none `0`.
    """
    _checks.check_choice("divergence", divergence, DIVERGENCES)
    u = log_ratio
    if divergence == "none":
        return jnp.zeros_like(u)
    if divergence == "kl":
        return jnp.exp(u) * u - jnp.expm1(u)
    if divergence == "reverse_kl":
        return jnp.expm1(u) - u
    if divergence == "chi2":
        return jnp.expm1(u) ** 2
    if divergence == "hellinger":
        return jnp.expm1(0.5 * u) ** 2
    return jnp.exp(u) * u - (1.0 + jnp.exp(u)) * (jax.nn.softplus(u) - jnp.log(2.0))


@register("fdiv_sft", "supervised")
def fdiv_sft(
    *,
    logps: Array,
    ref_logps: Array,
    mask: Array,
    divergence: str = "kl",
    ratio_coef: float = 0.1,
    max_log_ratio: float = 20.0,
    aggregation: str = "token_mean",
    segment_ids: Array | None = None,
    normalizer: float | None = None,
):
    """f-divergence SFT (after "Implicit Reward as the Bridge", Wang et al., 2025):

    `L = token_mean(-logp_t) + ratio_coef * token_mean(f(pi_t / ref_t))`.

    Derivation we implement (the paper's exact forms are *unverified*): SFT is distribution
    matching min KL(data || pi); written with the implicit reward `r = log pi/ref`, the
    KL-to-reference term of the implicit-reward objective is constant in plain SFT and drops
    out. The variants keep it as an f-divergence penalty between policy and reference,
    evaluated on the demonstration tokens with the generators of `f_divergence_penalty`.
    `divergence='none'` (or ratio_coef = 0) is plain SFT. The log-ratio is clipped to
    `+-max_log_ratio` before exponentiation (`log_ratio_clip_fraction` reports how often).
    """
    _checks.check_choice("divergence", divergence, DIVERGENCES)
    _checks.check_scalar("ratio_coef", ratio_coef, low=0.0)
    _checks.check_scalar("max_log_ratio", max_log_ratio, low=0.0, low_open=True)
    lp, m = _token_inputs("fdiv_sft", logps, mask)
    ref = _checks.f32("ref_logps", ref_logps)
    _checks.check_same_shape(logps=lp, ref_logps=ref)
    _checks.check_finite("ref_logps", ref_logps, where=mask)
    raw = jnp.where(m != 0, lp - ref, 0.0)
    u = jnp.clip(raw, -max_log_ratio, max_log_ratio)
    penalty = f_divergence_penalty(u, divergence)
    per_token = -lp + ratio_coef * penalty
    loss = _reduce(per_token, m, "fdiv_sft", aggregation, segment_ids, normalizer)
    denom = jnp.maximum(jnp.sum(m), 1.0)
    return loss, {
        "nll": jnp.sum(jnp.where(m != 0, -lp, 0.0)) / denom,
        "divergence": jnp.sum(jnp.where(m != 0, penalty, 0.0)) / denom,
        "log_ratio_clip_fraction": jnp.sum(jnp.where(m != 0, (raw != u), False)) / denom,
        "per_token_loss": jnp.where(m != 0, per_token, 0.0),
    }


@register("iq_mle", "supervised", inputs=("logits", "targets", "mask"))
def iq_mle(*, logits: Array, targets: Array, mask: Array, lam: float = 0.0, gamma: float = 1.0):
    """IQ-Learn as a language-model objective (Garg et al., 2021; "IRL via IQLearn" for LMs):
    logits are soft Q-values, `V(s) = logsumexp_a Q(s, a)`, `log pi(a|s) = Q(s,a) - V(s)`.

    `L = [sum_t -m_t*log pi(a_t|s_t) + lam * sum_t m_t*(Q(s_t,a_t) - gamma*V(s_{t+1}))**2] /
    sum_t m_t`, with `V(s_{t+1}) = 0` after the last response token of a row (terminal).
    `lam = 0` is MLE (equal to `sft`). Needs the full logits [B, T, V] (computed in float32).
    """
    _checks.check_scalar("lam", lam, low=0.0)
    _checks.check_scalar("gamma", gamma, low=0.0, high=1.0)
    q = _checks.f32("logits", logits)
    _checks.check_rank("logits", q, 3)
    tgt = jnp.asarray(targets)
    if not jnp.issubdtype(tgt.dtype, jnp.integer):
        raise TypeError(f"loss 'iq_mle': `targets` must be integer token ids, got {tgt.dtype}")
    m = _checks.mask_f32("mask", mask)
    _checks.check_same_shape(targets=tgt, mask=m)
    if tgt.shape != q.shape[:2]:
        raise ValueError(f"loss 'iq_mle': logits {q.shape} do not match targets {tgt.shape}")
    _checks.check_finite("logits", logits, where=jnp.asarray(mask)[..., None])
    if not _checks.is_traced(targets):
        t_np = jnp.asarray(targets)
        if bool(jnp.any((t_np < 0) | (t_np >= q.shape[-1]))):
            raise ValueError(f"loss 'iq_mle': `targets` must lie in [0, {q.shape[-1]})")
    v = jax.nn.logsumexp(q, axis=-1)  # [B, T]
    q_a = jnp.take_along_axis(q, tgt[..., None].astype(jnp.int32), axis=-1)[..., 0]
    logp = q_a - v
    next_m = jnp.concatenate([m[:, 1:], jnp.zeros_like(m[:, :1])], axis=1)
    next_v = jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1) * next_m
    td = q_a - gamma * next_v
    denom = jnp.maximum(jnp.sum(m), 1.0)
    nll = jnp.sum(jnp.where(m != 0, -logp, 0.0)) / denom
    td_loss = jnp.sum(jnp.where(m != 0, td**2, 0.0)) / denom
    return nll + lam * td_loss, {
        "nll": nll,
        "td_loss": td_loss,
        "per_token_loss": jnp.where(m != 0, -logp + lam * td**2, 0.0),
    }
