"""Name -> objective table. Each loss module registers its functions with `@register`."""

from __future__ import annotations

from typing import Callable

FAMILIES = ("preference", "token_preference", "supervised", "policy_gradient", "reward_model")

_LOSSES: dict[str, tuple[str, Callable]] = {}


def register(name: str, family: str, *, overwrite: bool = False) -> Callable[[Callable], Callable]:
  """Decorator: make `fn` reachable as `alignment.losses.get(name)`.

  A name already bound to another function is refused (two modules claiming one name is a bug)
  unless `overwrite=True`, which replaces it: re-running a notebook cell that defines a loss.
  """
  if family not in FAMILIES:
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

  def deco(fn: Callable) -> Callable:
    if name in _LOSSES and _LOSSES[name][1] is not fn and not overwrite:
      raise ValueError(f"loss name {name!r} is already registered to {_LOSSES[name][1]}; pass "
                       "overwrite=True to replace it (e.g. when re-running a notebook cell)")
    _LOSSES[name] = (family, fn)
    return fn

  return deco
