"""Name -> objective table. Each loss module registers its functions with `@register`."""

from __future__ import annotations

from typing import Callable

FAMILIES = ("preference", "token_preference", "supervised", "policy_gradient", "reward_model")

_LOSSES: dict[str, tuple[str, Callable]] = {}


def register(name: str, family: str) -> Callable[[Callable], Callable]:
  """Decorator: make `fn` reachable as `alignment.losses.get(name)`."""
  if family not in FAMILIES:
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

  def deco(fn: Callable) -> Callable:
    if name in _LOSSES and _LOSSES[name][1] is not fn:
      raise ValueError(f"loss name {name!r} is already registered to {_LOSSES[name][1]}")
    _LOSSES[name] = (family, fn)
    return fn

  return deco
