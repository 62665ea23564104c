"""Ranking diagnostics of preference data and models (cheap, very informative).

Chen et al., 2024, "Preference Learning Algorithms Do Not Learn Preference Rankings": the
ranking accuracy `mean(pc >= pr)` of trained models stays low, and even the idealised
DPO/RLHF optimum is bounded by the reference model's ranking.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from alignment.losses import _checks

Array = Any


def ranking_accuracy(
    *,
    policy_chosen_logps: Array,
    policy_rejected_logps: Array,
    chosen_lengths: Array | None = None,
    rejected_lengths: Array | None = None,
) -> dict[str, jax.Array]:
    """`{'ranking_accuracy': mean(pc >= pr)}`, plus `'ranking_accuracy_normalized'`
    `mean(pc/Lc >= pr/Lr)` when lengths are given. Sequence log-probs [B]."""
    pc = _checks.f32("policy_chosen_logps", policy_chosen_logps)
    pr = _checks.f32("policy_rejected_logps", policy_rejected_logps)
    _checks.check_rank("policy_chosen_logps", pc, 1)
    _checks.check_same_shape(policy_chosen_logps=pc, policy_rejected_logps=pr)
    _checks.check_finite("policy_chosen_logps", policy_chosen_logps)
    _checks.check_finite("policy_rejected_logps", policy_rejected_logps)
    out = {"ranking_accuracy": jnp.mean((pc >= pr).astype(jnp.float32))}
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("pass both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None:
        lc = _checks.f32("chosen_lengths", chosen_lengths)
        lr = _checks.f32("rejected_lengths", rejected_lengths)
        _checks.check_same_shape(policy_chosen_logps=pc, chosen_lengths=lc, rejected_lengths=lr)
        _checks.check_positive("chosen_lengths", chosen_lengths)
        _checks.check_positive("rejected_lengths", rejected_lengths)
        out["ranking_accuracy_normalized"] = jnp.mean((pc / lc >= pr / lr).astype(jnp.float32))
    return out


def idealized_ranking_accuracy(
    *,
    ref_chosen_logps: Array,
    ref_rejected_logps: Array,
    beta: float,
    rater_agreement: Array = 1.0 - 1e-6,
) -> jax.Array:
    """Ranking accuracy of the idealised DPO/RLHF optimum (Chen et al., 2024):

    `mean((rc - rr) + (1/b) * log(a / (1 - a)) > 0)` with `a` the fraction of raters preferring
    the chosen response (scalar or [B]; use 1 - eps for unanimous, a must be in (0, 1)).
    """
    _checks.check_scalar("beta", beta, low=0.0, low_open=True)
    rc = _checks.f32("ref_chosen_logps", ref_chosen_logps)
    rr = _checks.f32("ref_rejected_logps", ref_rejected_logps)
    _checks.check_rank("ref_chosen_logps", rc, 1)
    _checks.check_same_shape(ref_chosen_logps=rc, ref_rejected_logps=rr)
    _checks.check_finite("ref_chosen_logps", ref_chosen_logps)
    _checks.check_finite("ref_rejected_logps", ref_rejected_logps)
    a = _checks.f32("rater_agreement", rater_agreement)
    if not _checks.is_traced(rater_agreement):
        if bool(jnp.any((a <= 0) | (a >= 1))):
            raise ValueError(
                "`rater_agreement` must lie strictly in (0, 1) (use 1 - eps for unanimous raters)"
            )
    logit_a = jnp.log(a) - jnp.log1p(-a)
    return jnp.mean(((rc - rr) + logit_a / beta > 0).astype(jnp.float32))
