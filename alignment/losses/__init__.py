"""Objectives as pure functions of arrays: `loss, metrics = losses.get(name)(**arrays, **knobs)`.

Every loss is keyword-only, never sees a model, computes in float32 and works under `jit`
and `vmap`. Families: `preference` (sequence log-probs [B] of chosen/rejected pairs),
`token_preference` (per-token [B, T] log-probs), `supervised` (per-token log-probs or
logits of demonstrations), `policy_gradient` (per-token log-probs of samples plus
advantages) and `reward_model` (scores of chosen/rejected responses from a score head).
`available()` lists them; formulas and papers are in each docstring and in docs/objectives.md.

A loss's arguments are its *inputs* (arrays the learner computes from a batch; `INPUTS` lists
them per family, `inputs(loss)` per loss) and its *knobs* (hyper-parameters from a config's
`loss_kwargs`; `defaults(loss)`). Reference log-probs are `ref_chosen_logps`,
`ref_rejected_logps` (sequence sums) and `ref_logps` (per token).

A new objective is one function decorated with `register(name, family)` (a sequence-level
preference loss: `preference_loss(name, ...)`, which validates the pair once and hands the
function its `Pair`) in a module of this package (import it below), or any function reachable
as `"package.module:function"`.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

from alignment.losses import (
    policy_gradient,  # noqa: F401  (imported for its registrations)
    preference,  # noqa: F401
    preference_extra,  # noqa: F401
    reward,  # noqa: F401
    supervised,  # noqa: F401
    token_level,  # noqa: F401
)
from alignment.losses._pairs import Pair, preference_loss
from alignment.losses._registry import (
    _LOSSES,
    FAMILIES,
    INPUTS,
    REFERENCE_INPUTS,
    Spec,
    make_spec,
    register,
)
from alignment.losses.diagnostics import idealized_ranking_accuracy, ranking_accuracy
from alignment.losses.kl import kl_estimate
from alignment.losses.policy_gradient import aggregate, entropy_from_logits
from alignment.losses.token_level import wpo_weights

__all__ = [
    "get",
    "available",
    "defaults",
    "family",
    "register",
    "preference_loss",
    "Pair",
    "spec",
    "Spec",
    "inputs",
    "needs_reference",
    "FAMILIES",
    "INPUTS",
    "REFERENCE_INPUTS",
    "kl_estimate",
    "aggregate",
    "entropy_from_logits",
    "wpo_weights",
    "ranking_accuracy",
    "idealized_ranking_accuracy",
]


def available() -> dict[str, str]:
    """Registered loss names mapped to their family, sorted by family then name."""
    return dict(
        sorted(
            ((n, e.family) for n, e in _LOSSES.items()),
            key=lambda kv: (FAMILIES.index(kv[1]), kv[0]),
        )
    )


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
        return _LOSSES[name].fn
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot load loss {name!r}: {e}") from None
        if not callable(fn):
            raise ValueError(f"loss {name!r} is not callable")
        return fn
    raise ValueError(
        f"unknown loss {name!r}. Valid names are {_listing()} (or 'package.module:function')"
    )


def spec(loss: str | Callable) -> Spec:
    """What loss `loss` (a name or a function) takes: its array inputs, its knobs, which are
    required, its family. A function that is not registered is read from its signature: its
    inputs are the arguments named like any family's `INPUTS`."""
    fn = get(loss) if isinstance(loss, str) else loss
    for entry in _LOSSES.values():
        if entry.fn is fn:
            return entry.spec
    return make_spec(fn, None)


def inputs(loss: str | Callable) -> tuple[str, ...]:
    """The array inputs of `loss` (a name or a function), in signature order."""
    return spec(loss).inputs


def needs_reference(loss: str | Callable) -> bool:
    """Whether `loss` requires reference log-probs (reference-free losses skip that forward)."""
    return spec(loss).needs_reference


def defaults(name: str) -> dict[str, bool | int | float | str]:
    """The scalar hyper-parameters of loss `name` with the loss's own defaults (what a config's
    `loss_kwargs` starts from); arguments defaulting to None are left out."""
    s = spec(name)
    knobs = {}
    for p in inspect.signature(get(name)).parameters.values():
        if p.name not in s.knobs or p.default is inspect.Parameter.empty or p.default is None:
            continue
        if isinstance(p.default, (bool, int, float, str)):
            knobs[p.name] = p.default
    return knobs


def family(name: str) -> str:
    """The family of a registered loss."""
    get(name)
    if name not in _LOSSES:
        raise ValueError(f"{name!r} is not a registered loss; only registered losses have a family")
    return _LOSSES[name].family
