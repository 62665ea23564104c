"""Objectives as pure functions of arrays: `loss, metrics = losses.get(name)(**arrays, **knobs)`.

Every loss is keyword-only, never sees a model, computes in float32 and works under `jit`
and `vmap`. Families: `preference` (sequence log-probs [B] of chosen/rejected pairs),
`token_preference` (per-token [B, T] log-probs), `supervised` (per-token log-probs or
logits of demonstrations) and `policy_gradient` (per-token log-probs of samples plus
advantages) and `reward_model` (scores of chosen/rejected
responses from a score head). `available()` lists them; formulas and papers are in each docstring and in
docs/objectives.md.

A new objective is one function decorated with `register(name, family)` in a module of
this package (import it below), or any function reachable as `"package.module:function"`.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

from alignment.losses._registry import FAMILIES, register
from alignment.losses import preference  # noqa: F401  (registers)
from alignment.losses import preference_extra  # noqa: F401
from alignment.losses import token_level  # noqa: F401
from alignment.losses import supervised  # noqa: F401
from alignment.losses import policy_gradient  # noqa: F401
from alignment.losses import reward  # noqa: F401
from alignment.losses._registry import _LOSSES
from alignment.losses.diagnostics import idealized_ranking_accuracy, ranking_accuracy
from alignment.losses.kl import kl_estimate
from alignment.losses.policy_gradient import aggregate, entropy_from_logits
from alignment.losses.token_level import wpo_weights

__all__ = ["get", "available", "defaults", "family", "register", "FAMILIES", "kl_estimate", "aggregate",
           "entropy_from_logits", "wpo_weights", "ranking_accuracy",
           "idealized_ranking_accuracy"]


def available() -> dict[str, str]:
  """Registered loss names mapped to their family, sorted by family then name."""
  return dict(sorted(((n, fam) for n, (fam, _) in _LOSSES.items()),
                     key=lambda kv: (FAMILIES.index(kv[1]), kv[0])))


def _listing() -> str:
  by_family: dict[str, list[str]] = {}
  for name, fam in available().items():
    by_family.setdefault(fam, []).append(name)
  return "; ".join(f"{fam}: {', '.join(names)}" for fam, names in by_family.items())


def get(name: str) -> Callable:
  """The loss function registered as `name`, or `"package.module:function"` imported.

  Unknown names raise a ValueError that lists every valid name by family.
  """
  if not isinstance(name, str):
    raise ValueError(f"loss name must be a string, got {type(name).__name__}")
  if name in _LOSSES:
    return _LOSSES[name][1]
  if ":" in name:
    module_name, _, attr = name.partition(":")
    try:
      fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
      raise ValueError(f"cannot load loss {name!r}: {e}") from None
    if not callable(fn):
      raise ValueError(f"loss {name!r} is not callable")
    return fn
  raise ValueError(f"unknown loss {name!r}. Valid names are {_listing()} "
                   "(or 'package.module:function')")


# arguments that carry the batch's arrays, never hyper-parameters (even where they default to a scalar)
ARRAY_INPUTS = frozenset({
    "policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps",
    "chosen_lengths", "rejected_lengths", "logps", "mask", "loss_mask", "token_logps",
    "policy_chosen_token_logps", "policy_rejected_token_logps", "chosen_mask", "rejected_mask",
})


def defaults(name: str) -> dict[str, bool | int | float | str]:
  """The scalar hyper-parameters of loss `name` with the loss's own defaults (what a config's
  `loss_kwargs` starts from); arguments defaulting to None are left out."""
  knobs = {}
  for p in inspect.signature(get(name)).parameters.values():
    if p.name in ARRAY_INPUTS or p.default is inspect.Parameter.empty or p.default is None:
      continue
    if isinstance(p.default, (bool, int, float, str)):
      knobs[p.name] = p.default
  return knobs


def family(name: str) -> str:
  """The family of a registered loss."""
  get(name)
  if name not in _LOSSES:
    raise ValueError(f"{name!r} is not a registered loss; only registered losses have a family")
  return _LOSSES[name][0]
