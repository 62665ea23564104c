"""Pytree containers passed between the host loop, learners and the jitted step.

Batches are flax.struct dataclasses over arrays with a leading batch axis B; they mirror the
batch dicts produced by `alignment.data` (see the batch contract in the design notes) and can be
built from them with `from_dict`, which names any missing field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
from flax import struct


def _from_dict(cls, batch: Mapping[str, Any]):
    names = [f.name for f in dataclasses.fields(cls)]
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
    missing = [n for n in required if n not in batch]
    if missing:
        raise KeyError(f"{cls.__name__}: batch is missing field(s) {missing}; it has {sorted(batch)}")
    return cls(**{n: batch[n] for n in names if n in batch})


@struct.dataclass
class SFTBatch:
    """Demonstrations: `loss_mask` is 1 on response tokens whose log-prob is trained."""
    input_ids: jax.Array        # [B, T] int32
    attention_mask: jax.Array   # [B, T] int32, 1 = real token
    loss_mask: jax.Array        # [B, T] int32
    segment_ids: Any = None     # [B, T] int32, 0 = padding, 1.. = packed documents
    positions: Any = None       # [B, T] int32, restart at 0 per document

    from_dict = classmethod(_from_dict)


@struct.dataclass
class PreferenceBatch:
    """Pairs (chosen, rejected) of the same prompt; reference log-probs optional ([B] f32 sums)."""
    chosen_input_ids: jax.Array
    chosen_attention_mask: jax.Array
    chosen_loss_mask: jax.Array
    rejected_input_ids: jax.Array
    rejected_attention_mask: jax.Array
    rejected_loss_mask: jax.Array
    reference_chosen_logps: Any = None
    reference_rejected_logps: Any = None

    from_dict = classmethod(_from_dict)


@struct.dataclass
class RolloutBatch:
    """Sampled sequences (prompt + response) with per-token quantities for policy-gradient updates."""
    input_ids: jax.Array        # [B, T]
    attention_mask: jax.Array   # [B, T]
    loss_mask: jax.Array        # [B, T] 1 on sampled response tokens
    old_logps: jax.Array        # [B, T] f32, behaviour policy log-probs
    advantages: jax.Array       # [B, T] f32
    reference_logps: Any = None  # [B, T] f32
    returns: Any = None         # [B, T] f32, value targets
    old_values: Any = None      # [B, T] f32

    from_dict = classmethod(_from_dict)


@struct.dataclass
class TrainState:
    """Everything the jitted step reads and writes.

    `params` is a pure nested dict of arrays (the model's `nnx.State` as `to_pure_dict`), so
    optax, orbax and path regexes see plain names. `ref_params` holds the frozen reference only
    when it is evaluated inside the step (`reference.mode == "in_step"`); it is never
    checkpointed (it is re-created from the initial weights on resume).
    """
    step: jax.Array             # int32 scalar: number of optimizer updates applied
    params: Any
    opt_state: Any
    rng: jax.Array              # uint32 [2] raw PRNG key, folded with `step` inside the step
    ref_params: Any = None
