"""Input validation shared by every objective.

Shape checks run on static shapes, so they hold under `jit` and `vmap` too. Value checks (NaN,
lengths > 0, log-probs <= 0) need concrete numbers: they run eagerly and are skipped under
tracing, where a NaN input is left to propagate into the loss (never masked away with
`jnp.where`) so the trainer's NaN guard sees it.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(x: Any) -> bool:
    """True when `x` is an abstract value inside `jit`/`vmap`/`grad` (no concrete numbers)."""
    return isinstance(x, jax.core.Tracer)


def f32(name: str, x: Any) -> jax.Array:
    """`x` as a float32 array; a clear error for None or non-numeric input."""
    if x is None:
        raise ValueError(f"argument `{name}` is required but was None")
    try:
        arr = jnp.asarray(x)
    except TypeError as e:
        raise TypeError(f"argument `{name}` must be an array, got {type(x).__name__}") from e
    if not (
        jnp.issubdtype(arr.dtype, jnp.floating)
        or jnp.issubdtype(arr.dtype, jnp.integer)
        or arr.dtype == jnp.bool_
    ):
        raise TypeError(f"argument `{name}` must be numeric, got dtype {arr.dtype}")
    return arr.astype(jnp.float32)


def mask_f32(name: str, x: Any) -> jax.Array:
    """A 0/1 mask (bool, int or float) as float32; checks values are in {0, 1} when concrete."""
    arr = f32(name, x)
    if not is_traced(x) and not is_traced(arr):
        bad = np.asarray((arr != 0) & (arr != 1))
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"`{name}` must be a 0/1 mask; index {idx} holds {float(arr[idx])}")
    return arr


def check_rank(name: str, x: jax.Array, ndim: int) -> None:
    if x.ndim != ndim:
        raise ValueError(f"`{name}` must have rank {ndim}, got shape {tuple(x.shape)}")


def check_same_shape(**arrays: jax.Array | None) -> None:
    """All non-None arrays share one shape; the error names every argument and its shape."""
    given = {k: tuple(v.shape) for k, v in arrays.items() if v is not None}
    if len(set(given.values())) > 1:
        listing = ", ".join(f"{k}={s}" for k, s in given.items())
        raise ValueError(f"shape mismatch: {listing}")


def check_finite(name: str, x: Any, where: Any = None) -> None:
    """Raise if a concrete `x` holds NaN/Inf (restricted to `where != 0` when given).

    Skipped under tracing: there the value is unknown and the NaN reaches the loss unhidden.
    """
    if x is None or is_traced(x) or is_traced(where):
        return
    arr = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if where is not None:
        bad &= np.broadcast_to(np.asarray(where) != 0, bad.shape)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"`{name}` holds a non-finite value ({arr[idx]}) at index {idx}; "
            f"{int(bad.sum())} non-finite entries in all"
        )


def check_positive(name: str, x: Any) -> None:
    """Raise if a concrete `x` has an entry <= 0 (e.g. response lengths for normalised losses)."""
    if x is None or is_traced(x):
        return
    arr = np.asarray(x)
    bad = ~(arr > 0)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"`{name}` must be > 0 everywhere; index {idx} holds {arr[idx]}")


def check_nonpositive(name: str, x: Any, where: Any = None) -> None:
    """Raise if a concrete log-prob array has an entry > 0 (a log-probability cannot exceed 0)."""
    if x is None or is_traced(x) or is_traced(where):
        return
    arr = np.asarray(x, dtype=np.float64)
    # float32 rounding of a sum of tiny negative numbers can land a hair above 0.
    bad = arr > 1e-4
    if where is not None:
        bad &= np.broadcast_to(np.asarray(where) != 0, bad.shape)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"`{name}` must hold log-probabilities (<= 0); index {idx} holds {arr[idx]}"
        )


def check_scalar(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Range check for a hyper-parameter; skipped if it is a traced array."""
    if value is None:
        raise ValueError(f"hyper-parameter `{name}` is required but was None")
    if is_traced(value):
        return
    if not isinstance(value, numbers.Real):
        arr = np.asarray(value)
        if arr.shape != ():
            raise ValueError(f"hyper-parameter `{name}` must be a scalar, got shape {arr.shape}")
        value = float(arr)
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"hyper-parameter `{name}` must be finite, got {value}")
    lo_bad = low is not None and (value <= low if low_open else value < low)
    hi_bad = high is not None and (value >= high if high_open else value > high)
    if lo_bad or hi_bad:
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        rng = f"{lb}{'-inf' if low is None else low}, {'inf' if high is None else high}{hb}"
        raise ValueError(f"hyper-parameter `{name}` must be in {rng}, got {value}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}")
