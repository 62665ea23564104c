"""Scalar heads on the decoder: reward-model scores and per-token values.

    sequence_scores(model, input_ids, attention_mask) -> [B]     score at the last real token
    token_values(model, input_ids, attention_mask)    -> [B, T]  score at every position
                                                                 (0 on padding)

Both read the `score` projection of a `Transformer` built with `num_labels > 0` (logical axes
("embed", "value_head")), in float32. The last real token is the rightmost position with
attention_mask = 1, so left and right padding both work, as in transformers'
`*ForSequenceClassification` (which finds the rightmost non-pad token id).
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
from flax import nnx


def last_token_index(attention_mask):
    """[B] int32 index of the rightmost attention_mask = 1 position (0 for an all-padding row).

    attention_mask: [B, T], 1 = token, 0 = padding.
    """
    mask_BxT = jnp.asarray(attention_mask).astype(bool)
    t = mask_BxT.shape[1]
    return jnp.max(jnp.where(mask_BxT, jnp.arange(t, dtype=jnp.int32)[None], 0), axis=1)


def _all_scores(model, input_ids_BxT, attention_mask_BxT, positions=None, segment_ids=None):
    hidden_BxTxD = model(
        input_ids_BxT,
        attention_mask_BxT,
        positions=positions,
        segment_ids=segment_ids,
        return_hidden=True,
    )
    return model.scores(hidden_BxTxD)


def sequence_scores(model, input_ids, attention_mask=None):
    """float32 score of each row at its last real token: [B] (num_labels = 1) or [B, num_labels].

    input_ids: [B, T] int; attention_mask: [B, T], 1 = token, 0 = padding (default all ones).
    """
    input_ids_BxT = jnp.asarray(input_ids)
    if attention_mask is None:
        attention_mask_BxT = jnp.ones_like(input_ids_BxT)
    else:
        attention_mask_BxT = attention_mask
    scores_BxTxL = _all_scores(model, input_ids_BxT, attention_mask_BxT)
    last_B = last_token_index(attention_mask_BxT)
    out_BxL = jnp.take_along_axis(scores_BxTxL, last_B[:, None, None], axis=1)[:, 0]
    return out_BxL[:, 0] if out_BxL.shape[-1] == 1 else out_BxL


def token_values(model, input_ids, attention_mask=None, *, positions=None, segment_ids=None):
    """float32 per-position scores [B, T] of a one-label head (a PPO value head), 0 where mask = 0.

    input_ids: [B, T] int; attention_mask: [B, T] (default all ones); positions, segment_ids:
    [B, T] int, passed to the model. values[:, t] is the value of the state after reading
    tokens <= t.
    """
    input_ids_BxT = jnp.asarray(input_ids)
    if attention_mask is None:
        attention_mask_BxT = jnp.ones_like(input_ids_BxT)
    else:
        attention_mask_BxT = attention_mask
    if model.config.num_labels != 1:
        raise ValueError(
            f"token_values needs a one-label head, the model has num_labels={model.config.num_labels}"
        )
    scores_BxTx1 = _all_scores(model, input_ids_BxT, attention_mask_BxT, positions, segment_ids)
    scores_BxT = scores_BxTx1[..., 0]
    return jnp.where(jnp.asarray(attention_mask_BxT).astype(bool), scores_BxT, 0.0)


def make_score_fn(graphdef) -> Callable:
    """`score_fn(params, input_ids, attention_mask) -> [B]`: `sequence_scores` of the model
    `graphdef` under the pure dict `params` (merged inside whatever jit calls it)."""

    def score_fn(params, input_ids, attention_mask):
        return sequence_scores(nnx.merge(graphdef, params), input_ids, attention_mask)

    return score_fn


def make_value_fn(graphdef) -> Callable:
    """`value_fn(params, input_ids, attention_mask) -> [B, T]`: `token_values` under `params`."""

    def value_fn(params, input_ids, attention_mask):
        return token_values(nnx.merge(graphdef, params), input_ids, attention_mask)

    return value_fn
