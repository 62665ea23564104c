"""Device mesh, the one logical-axis rule table, and shardings for parameters and batches.

Models name the axes of every parameter with logical names (`nnx.Param(..., logical_axes=...)`);
this module alone decides which mesh axis each logical name lives on. FSDP versus tensor
parallelism is then a mesh-shape choice (`mesh.fsdp` vs `mesh.tensor` in the config), never a
code change. The rule style follows MaxText's `logical_axis_rules`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of mesh axes, or None = replicated).
LOGICAL_RULES: dict[str, Any] = {
    # parameters
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "layers": None,
    "norm": None,
    "position": None,
    "value_head": None,
    # activations
    "batch": ("data", "fsdp"),
    "length": None,
}

_warned: set[tuple] = set()


def mesh_shape(mesh_cfg: Mapping[str, int], num_devices: int | None = None) -> tuple[int, int, int]:
    """Resolves `{data, fsdp, tensor}` (one may be -1) to sizes whose product is the device count."""
    n = jax.device_count() if num_devices is None else num_devices
    sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
    bad = [a for a, s in zip(MESH_AXES, sizes) if s == 0 or s < -1]
    if bad:
        raise ValueError(f"mesh.{bad[0]} must be a positive integer or -1, got {mesh_cfg[bad[0]]}")
    if sizes.count(-1) > 1:
        raise ValueError(
            f"at most one of mesh.data/fsdp/tensor may be -1, got {dict(zip(MESH_AXES, sizes))}"
        )
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if n % known:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, sizes))}: {n} devices are not divisible by {known}"
            )
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} devices but {n} are available; "
            "set one of mesh.data/fsdp/tensor to -1 to fill"
        )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(
    mesh_cfg: Mapping[str, int] | None = None, devices: Sequence[Any] | None = None
) -> Mesh:
    """A `(data, fsdp, tensor)` mesh with automatic (not explicit) sharding axes."""
    mesh_cfg = mesh_cfg or {"data": 1, "fsdp": -1, "tensor": 1}
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def logical_to_spec(
    logical_axes: Sequence[str | None] | None,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    rules: Mapping[str, Any] | None = None,
) -> P:
    """Maps logical axis names to a `PartitionSpec` through the rule table.

    A dimension not divisible by its mesh axes is replicated instead (tiny test models have
    e.g. 2 kv heads on a tensor axis of 4); each such case is logged once. A mesh axis is used
    at most once per array.
    """
    if logical_axes is None:
        return P()
    rules = LOGICAL_RULES if rules is None else rules
    used: set[str] = set()
    spec = []
    for i, name in enumerate(logical_axes):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ValueError(
                f"logical axis {name!r} has no rule in alignment.sharding.LOGICAL_RULES"
            )
        target = rules[name]
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used)
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape[a] > 1)
            if shape is not None and axes:
                size = math.prod(mesh.shape[a] for a in axes)
                if shape[i] % size:
                    key = (name, shape[i], size)
                    if key not in _warned:
                        _warned.add(key)
                        logging.info(
                            "replicating logical axis %r of size %d (not divisible by %d)",
                            name,
                            shape[i],
                            size,
                        )
                    axes = ()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def _is_variable(x) -> bool:
    return hasattr(x, "get_metadata") and hasattr(x, "value")


def state_logical_axes(state):
    """Pytree of logical-axis tuples (or None) matching an `nnx.State` of Variables."""
    return jax.tree.map(lambda v: v.get_metadata().get("logical_axes"), state, is_leaf=_is_variable)


def state_shardings(state, mesh: Mesh, rules: Mapping[str, Any] | None = None):
    """`NamedSharding`s for an `nnx.State` (abstract or concrete), from each Variable's logical axes."""

    def one(v):
        value = v.value if _is_variable(v) else v
        axes = v.get_metadata().get("logical_axes") if _is_variable(v) else None
        return NamedSharding(
            mesh, logical_to_spec(axes, getattr(value, "shape", None), mesh, rules)
        )

    return jax.tree.map(one, state, is_leaf=_is_variable)


def batch_spec(ndim: int) -> P:
    """Batch arrays shard their leading axis over data and fsdp, the rest replicated."""
    return P(("data", "fsdp"), *([None] * (ndim - 1)))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    return NamedSharding(mesh, batch_spec(ndim))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
