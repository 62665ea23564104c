"""Reward-model learner: preference pairs -> scalar scores -> a `reward_model`-family loss.

The model is seen only as `score_fn(params, input_ids, attention_mask) -> [N]` float32, the
score head at each row's last real token, as `alignment.models.make_score_fn` builds it. Chosen
and rejected run as one forward of 2B rows interleaved (c_0, r_0, c_1, ...) so a pair stays on
the device that holds it. The batch is the engine's preference batch
(`chosen_*` / `rejected_*` fields); an optional `margin` [B] field feeds the loss's `margins`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp

from alignment import losses
from alignment.learners.offline import _interleave, _require, _scalar_metrics, call_loss

ScoreFn = Callable[..., jax.Array]
RM_FIELDS = (
    "chosen_input_ids",
    "chosen_attention_mask",
    "rejected_input_ids",
    "rejected_attention_mask",
)
# the loss inputs this learner computes (names owned by `alignment.losses.INPUTS`)
PROVIDES = frozenset(losses.INPUTS["reward_model"])


def check_supported(loss_fn: Callable, loss_kwargs: Iterable[str] = ()) -> None:
    """Fails early when a loss requires an argument that neither this learner provides nor
    `loss_kwargs` sets."""
    spec = losses.spec(loss_fn)
    unset_knobs = spec.required - set(spec.inputs) - set(loss_kwargs)
    missing = (spec.required_inputs - PROVIDES) | unset_knobs
    if missing:
        raise ValueError(
            f"loss {loss_fn.__name__!r} requires {sorted(missing)}, which the "
            "reward-model learner does not provide (it provides "
            f"{sorted(PROVIDES)})"
        )


def pair_scores(score_fn: ScoreFn, params, batch: Mapping[str, jax.Array]):
    """(chosen_scores [B], rejected_scores [B]) float32 from one forward of 2B rows."""
    ids = _interleave(batch["chosen_input_ids"], batch["rejected_input_ids"])
    attn = _interleave(batch["chosen_attention_mask"], batch["rejected_attention_mask"])
    scores_Bx2 = score_fn(params, ids, attn).astype(jnp.float32).reshape(-1, 2)
    return scores_Bx2[:, 0], scores_Bx2[:, 1]


def reward_model_loss(
    score_fn: ScoreFn,
    params,
    batch: Mapping[str, jax.Array],
    *,
    loss_fn: Callable,
    loss_kwargs: Mapping[str, Any],
):
    """`(loss, weight = number of pairs, metrics)` of a reward-model loss on a batch of pairs."""
    _require(batch, RM_FIELDS, "reward-model")
    sc, sr = pair_scores(score_fn, params, batch)
    available = {"chosen_scores": sc, "rejected_scores": sr}
    if "margin" in batch:
        available["margins"] = batch["margin"].astype(jnp.float32)
    loss, metrics = call_loss(loss_fn, available, loss_kwargs)
    return loss, jnp.asarray(sc.shape[0], jnp.float32), _scalar_metrics(metrics)
