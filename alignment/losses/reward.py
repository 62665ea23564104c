"""Reward-model objectives: scores of chosen and rejected responses in, `(loss, metrics)` out.

Inputs are float32 scalar scores `chosen_scores` (s_c) and `rejected_scores` (s_r), shape [B],
from a model with a score head (`alignment.models.sequence_scores`); never a model.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from alignment.losses import _checks
from alignment.losses._registry import register

Array = Any


@register("bradley_terry", "reward_model")
def bradley_terry(
    *,
    chosen_scores: Array,
    rejected_scores: Array,
    margins: Array | None = None,
    margin: float = 0.0,
    center_rewards_coefficient: float = 0.0,
):
    """Bradley-Terry reward-model loss (Stiennon et al., 2020; Ouyang et al., 2022):

        loss = mean_i -logsig(s_c,i - s_r,i - m_i) + c * mean_i (s_c,i + s_r,i)^2

    `m_i = margin + margins_i` (Llama 2's margin for clearly better pairs; `margins` optional per
    pair), `c = center_rewards_coefficient` pulls the scores towards zero mean (Eisenstein et al.,
    2023), both as in TRL's RewardTrainer. Metrics: per-pair `losses`, `accuracy` (s_c > s_r),
    `margin` (s_c - s_r), `chosen_scores`, `rejected_scores`.
    """
    sc = _checks.f32("chosen_scores", chosen_scores)
    sr = _checks.f32("rejected_scores", rejected_scores)
    _checks.check_rank("chosen_scores", sc, 1)
    _checks.check_same_shape(chosen_scores=sc, rejected_scores=sr)
    _checks.check_finite("chosen_scores", chosen_scores)
    _checks.check_finite("rejected_scores", rejected_scores)
    if center_rewards_coefficient < 0:
        raise ValueError(
            f"bradley_terry: center_rewards_coefficient must be >= 0, got {center_rewards_coefficient}"
        )
    m = jnp.full_like(sc, margin)
    if margins is not None:
        mi = _checks.f32("margins", margins)
        _checks.check_same_shape(chosen_scores=sc, margins=mi)
        _checks.check_finite("margins", margins)
        m = m + mi
    diff = sc - sr
    losses = -jax.nn.log_sigmoid(diff - m)
    loss = jnp.mean(losses)
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * jnp.mean(jnp.square(sc + sr))
    metrics = {
        "losses": losses,
        "accuracy": (diff > 0).astype(jnp.float32),
        "margin": diff,
        "chosen_scores": sc,
        "rejected_scores": sr,
    }
    return loss, metrics
