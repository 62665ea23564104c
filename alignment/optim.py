"""The optax chain from `config.optim`: schedule, global-norm clipping, AdamW with a
weight-decay mask, and frozen parameters.

    clip_by_global_norm(max_grad_norm) -> scale_by_adam(b1, b2, eps)
      -> add_decayed_weights(weight_decay, mask) -> scale_by_learning_rate(schedule)

AdamW is Loshchilov & Hutter (2019), decoupled decay. Parameters whose '/'-joined path matches
`freeze_regex` get `optax.set_to_zero()` through `optax.multi_transform`, so they neither move
nor count towards the clipping norm. Decay is skipped for parameters with fewer than
`decay_min_ndim` dimensions and for paths matching `no_decay_regex` (norm scales, biases and
embeddings by default).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "linear", "cosine")


def path_str(path) -> str:
    """'/'-joined names of a pytree key path (dict keys, sequence indices, attributes)."""
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def param_paths(params) -> Any:
    """Pytree of '/'-joined path strings with the structure of `params`."""
    return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p), params)


def make_schedule(cfg: Mapping[str, Any], num_train_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then constant, linear or
    cosine decay to `learning_rate * end_lr_factor` at `num_train_steps`."""
    peak, warmup = float(cfg["learning_rate"]), int(cfg["warmup_steps"])
    end = peak * float(cfg["end_lr_factor"])
    kind = cfg["schedule"]
    if kind not in SCHEDULES:
        raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {kind!r}")
    if warmup < 0 or warmup > num_train_steps:
        raise ValueError(
            f"optim.warmup_steps={warmup} must lie in [0, num_train_steps={num_train_steps}]"
        )
    decay_steps = max(num_train_steps - warmup, 1)
    if kind == "constant":
        after = optax.constant_schedule(peak)
    elif kind == "linear":
        after = optax.linear_schedule(peak, end, decay_steps)
    else:
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def decay_mask(params, cfg: Mapping[str, Any]):
    """True where weight decay applies."""
    pattern = re.compile(cfg["no_decay_regex"]) if cfg["no_decay_regex"] else None
    min_ndim = int(cfg["decay_min_ndim"])

    def one(path, x):
        if jnp.ndim(x) < min_ndim:
            return False
        return not (pattern and pattern.search(path_str(path)))

    return jax.tree_util.tree_map_with_path(one, params)


def trainable_labels(params, freeze_regex: str):
    """'train' / 'frozen' label per parameter; errors when the regex freezes everything."""
    if not freeze_regex:
        return jax.tree.map(lambda _: "train", params)
    pattern = re.compile(freeze_regex)
    labels = jax.tree_util.tree_map_with_path(
        lambda p, _: "frozen" if pattern.search(path_str(p)) else "train", params
    )
    if all(lab == "frozen" for lab in jax.tree.leaves(labels)):
        raise ValueError(f"optim.freeze_regex={freeze_regex!r} freezes every parameter")
    return labels


def make_optimizer(
    cfg: Mapping[str, Any], params, num_train_steps: int
) -> optax.GradientTransformation:
    """Builds the chain described in the module docstring for the parameter pytree `params`
    (concrete or abstract: only structure, paths and ndim are read)."""
    if cfg["name"] != "adamw":
        raise ValueError(f"optim.name must be 'adamw', got {cfg['name']!r}")
    schedule = make_schedule(cfg, num_train_steps)
    parts = []
    if float(cfg["max_grad_norm"]) > 0:
        parts.append(optax.clip_by_global_norm(float(cfg["max_grad_norm"])))
    parts.append(
        optax.scale_by_adam(b1=float(cfg["b1"]), b2=float(cfg["b2"]), eps=float(cfg["eps"]))
    )
    if float(cfg["weight_decay"]) > 0:
        parts.append(
            optax.add_decayed_weights(float(cfg["weight_decay"]), mask=decay_mask(params, cfg))
        )
    parts.append(optax.scale_by_learning_rate(schedule))
    tx = optax.chain(*parts)
    if cfg["freeze_regex"]:
        tx = optax.multi_transform(
            {"train": tx, "frozen": optax.set_to_zero()},
            trainable_labels(params, cfg["freeze_regex"]),
        )
    return tx
