"""Per-token preference loss: DPO on weighted sums of per-token log-ratios.

One function covers the token-weighted family: sparse token masks (SparsePO), LD-DPO's
down-weighting of tokens past the shorter response (alpha), and WPO's per-example weights.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from alignment.losses import _checks, _pairs
from alignment.losses._registry import register

Array = Any


def _tokens(name_prefix: str, policy, reference, mask, weights):
    pol = _checks.f32(f"policy_{name_prefix}_logps", policy)
    ref = _checks.f32(f"ref_{name_prefix}_logps", reference)
    m = _checks.mask_f32(f"{name_prefix}_mask", mask)
    _checks.check_rank(f"policy_{name_prefix}_logps", pol, 2)
    _checks.check_same_shape(
        **{
            f"policy_{name_prefix}_logps": pol,
            f"ref_{name_prefix}_logps": ref,
            f"{name_prefix}_mask": m,
        }
    )
    w = None
    if weights is not None:
        w = _checks.f32(f"{name_prefix}_token_weights", weights)
        _checks.check_same_shape(**{f"{name_prefix}_mask": m, f"{name_prefix}_token_weights": w})
        _checks.check_finite(f"{name_prefix}_token_weights", weights)
    _checks.check_finite(f"policy_{name_prefix}_logps", policy, where=mask)
    _checks.check_finite(f"ref_{name_prefix}_logps", reference, where=mask)
    return pol, ref, m, w


def _ld_weights(mask: jax.Array, public: jax.Array, alpha: Any) -> jax.Array:
    """1 on the first `public` response tokens of each row, alpha after (LD-DPO)."""
    count = jnp.cumsum(mask, axis=1)
    return jnp.where(count <= public[:, None], 1.0, alpha)


@register("token_dpo", "token_preference")
def token_dpo(
    *,
    policy_chosen_logps: Array,
    policy_rejected_logps: Array,
    ref_chosen_logps: Array,
    ref_rejected_logps: Array,
    chosen_mask: Array,
    rejected_mask: Array,
    chosen_token_weights: Array | None = None,
    rejected_token_weights: Array | None = None,
    ld_alpha: float | None = None,
    example_weights: Array | None = None,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    chosen_lengths: Array | None = None,
    rejected_lengths: Array | None = None,
):
    """Token-weighted DPO. Inputs are per-token log-probs [B, T] (chosen and rejected may have
    different T) with 0/1 masks over response tokens. With token weights w (default 1):

    `cl = sum_t w_t*m_t*(pc_t - rc_t)`, `rl` likewise, loss `mean_b(e_b * cDPO(b*(cl - rl)))`.

    - sparse token masks (SparsePO, Christopoulou et al., 2024): pass 0/1 or soft weights;
    - LD-DPO (Liu et al., 2024): `ld_alpha` in [0, 1] multiplies the weight of tokens past the
      shorter response's length `min(Lc, Lr)` of each pair;
    - WPO (Zhou et al., 2024): `example_weights` e [B] (see `wpo_weights`), treated as constants.
    `chosen_lengths` / `rejected_lengths` are accepted for a uniform call signature and must
    equal the mask sums when given. Metrics are those of `dpo`, on the weighted sums.
    """
    _pairs.check_beta("token_dpo", beta)
    _pairs.check_label_smoothing("token_dpo", label_smoothing)
    try:
        pc_t, rc_t, mc, wc = _tokens(
            "chosen", policy_chosen_logps, ref_chosen_logps, chosen_mask, chosen_token_weights
        )
        pr_t, rr_t, mr, wr = _tokens(
            "rejected",
            policy_rejected_logps,
            ref_rejected_logps,
            rejected_mask,
            rejected_token_weights,
        )
    except (ValueError, TypeError) as e:
        raise type(e)(f"loss 'token_dpo': {e}") from None
    if pc_t.shape[0] != pr_t.shape[0]:
        raise ValueError(
            f"loss 'token_dpo': chosen batch {pc_t.shape[0]} != rejected batch {pr_t.shape[0]}"
        )
    lc, lr = jnp.sum(mc, axis=1), jnp.sum(mr, axis=1)
    _checks.check_positive("chosen_mask row sums", lc)
    _checks.check_positive("rejected_mask row sums", lr)
    for name, given, actual in (
        ("chosen_lengths", chosen_lengths, lc),
        ("rejected_lengths", rejected_lengths, lr),
    ):
        if given is not None and not _checks.is_traced(given) and not _checks.is_traced(actual):
            if not jnp.array_equal(jnp.asarray(given, jnp.float32), actual):
                raise ValueError(f"loss 'token_dpo': `{name}` does not match the mask row sums")
    wc = mc if wc is None else wc * mc
    wr = mr if wr is None else wr * mr
    if ld_alpha is not None:
        _checks.check_scalar("ld_alpha", ld_alpha, low=0.0, high=1.0)
        public = jnp.minimum(lc, lr)
        wc = wc * _ld_weights(mc, public, ld_alpha)
        wr = wr * _ld_weights(mr, public, ld_alpha)

    # where(), not multiply: log-probs at padding may be -inf, and -inf * 0 is NaN.
    def wsum(x, w):
        return jnp.sum(jnp.where(w != 0, x * w, 0.0), axis=1)

    pair = _pairs.Pair(
        pc=wsum(pc_t, wc),
        pr=wsum(pr_t, wr),
        rc=wsum(rc_t, wc),
        rr=wsum(rr_t, wr),
        lc=lc,
        lr=lr,
        has_reference=True,
    )
    losses = _pairs.smoothed_logistic(beta * (pair.cl - pair.rl), label_smoothing)
    if example_weights is not None:
        e = _checks.f32("example_weights", example_weights)
        _checks.check_same_shape(losses=losses, example_weights=e)
        _checks.check_finite("example_weights", example_weights)
        losses = jax.lax.stop_gradient(e) * losses
    return jnp.mean(losses), _pairs.metrics(losses, pair, beta)


def wpo_weights(
    *,
    chosen_logps: Array,
    chosen_mask: Array,
    rejected_logps: Array,
    rejected_mask: Array,
    chosen_log_sum_sq: Array | None = None,
    rejected_log_sum_sq: Array | None = None,
) -> jax.Array:
    """WPO pair weights (Zhou et al., 2024), [B], stop-gradient:

    `w = min(1, exp(mean_t(logp_t - n_t)[chosen] + mean_t(logp_t - n_t)[rejected]))` with
    `n_t = log sum_v pi(v | prefix)**2` (`*_log_sum_sq`, i.e. `logsumexp(2*logits)`; the
    paper's sampling-aligned normaliser). Without it n_t = 0: the plain geometric-mean
    probability of each response.
    """

    def mean_term(name, logps, mask, norm):
        x = _checks.f32(f"{name}_logps", logps)
        m = _checks.mask_f32(f"{name}_mask", mask)
        _checks.check_same_shape(**{f"{name}_logps": x, f"{name}_mask": m})
        n = jnp.zeros_like(x) if norm is None else _checks.f32(f"{name}_log_sum_sq", norm)
        _checks.check_same_shape(**{f"{name}_logps": x, f"{name}_log_sum_sq": n})
        _checks.check_positive(f"{name}_mask row sums", jnp.sum(m, axis=1))
        return jnp.sum(jnp.where(m != 0, x - n, 0.0), axis=1) / jnp.sum(m, axis=1)

    total = mean_term("chosen", chosen_logps, chosen_mask, chosen_log_sum_sq) + mean_term(
        "rejected", rejected_logps, rejected_mask, rejected_log_sum_sq
    )
    return jax.lax.stop_gradient(jnp.minimum(jnp.exp(total), 1.0))
