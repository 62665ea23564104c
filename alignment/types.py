"""The pytree the engine's jitted step reads and writes: `TrainState`.

Batches stay plain dicts of arrays with a leading batch axis B (the fields are documented where
they are made, in `alignment.data`, and where they are read, in `alignment.learners`).
"""

from __future__ import annotations

from typing import Any

import jax
from flax import struct


@struct.dataclass
class TrainState:
    """Everything the jitted step reads and writes.

    `params` is a pure nested dict of arrays (the model's `nnx.State` as `to_pure_dict`), so
    optax, orbax and path regexes see plain names. `ref_params` holds the frozen reference only
    when it is evaluated inside the step (`reference.mode == "in_step"`); it is never
    checkpointed (it is re-created from the initial weights on resume).
    """

    step: jax.Array  # int32 scalar: number of optimizer updates applied
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 [2] raw PRNG key, folded with `step` inside the step
    ref_params: Any = None
