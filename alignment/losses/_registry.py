"""Name -> objective table, and the one list of the array inputs each family takes.

Each loss module registers its functions with `@register` (preference losses with
`@preference_loss`, which registers too). A loss's arguments split into *inputs* (arrays computed
from the batch by the learner, never configured) and *knobs* (hyper-parameters, set from a
config's `loss_kwargs`). The inputs are declared here once per family (`INPUTS`); a loss that
takes other arrays declares them with `register(..., inputs=...)`.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

FAMILIES = ("preference", "token_preference", "supervised", "policy_gradient", "reward_model")

PAIR_INPUTS = (
    "policy_chosen_logps",
    "policy_rejected_logps",
    "ref_chosen_logps",
    "ref_rejected_logps",
    "chosen_lengths",
    "rejected_lengths",
)

# The array inputs of each family, i.e. what its learner computes from a batch and passes in.
INPUTS: dict[str, tuple[str, ...]] = {
    "preference": PAIR_INPUTS,
    "token_preference": PAIR_INPUTS + ("chosen_mask", "rejected_mask"),
    "supervised": ("logps", "mask", "segment_ids", "ref_logps"),
    "policy_gradient": (
        "logps",
        "mask",
        "advantages",
        "old_logps",
        "ref_logps",
        "values",
        "old_values",
        "returns",
        "entropy",
        "num_tokens",
    ),
    "reward_model": ("chosen_scores", "rejected_scores", "margins"),
}

# Inputs that hold reference-model log-probs: a loss requiring one needs a reference forward.
REFERENCE_INPUTS = ("ref_chosen_logps", "ref_rejected_logps", "ref_logps")

# Every input name of every family (how an unregistered function's inputs are recognised).
ALL_INPUTS = tuple(dict.fromkeys(n for names in INPUTS.values() for n in names))


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a loss function takes.

    `inputs`: its array inputs (in signature order); `knobs`: every other keyword argument
    (hyper-parameters); `required`: the names among both without a default; `var_kw`: whether
    it accepts `**kwargs`; `family`: None for an unregistered function.
    """

    family: str | None
    inputs: tuple[str, ...]
    knobs: tuple[str, ...]
    required: frozenset[str]
    var_kw: bool

    @property
    def required_inputs(self) -> frozenset[str]:
        return self.required & frozenset(self.inputs)

    @property
    def needs_reference(self) -> bool:
        """Whether the loss requires reference log-probs (a `**kwargs` loss may: say yes)."""
        return self.var_kw or bool(self.required & frozenset(REFERENCE_INPUTS))


@dataclasses.dataclass(frozen=True)
class _Entry:
    family: str
    fn: Callable
    spec: Spec


_LOSSES: dict[str, _Entry] = {}


def make_spec(fn: Callable, family: str | None, inputs: tuple[str, ...] | None = None) -> Spec:
    """The `Spec` of `fn`: inputs are `inputs` when given, else the arguments of `fn` named in
    the family's `INPUTS` (in any family's when `family` is None)."""
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    names = [p.name for p in params]
    if inputs is not None:
        unknown = [n for n in inputs if n not in names]
        if unknown:
            raise ValueError(
                f"{getattr(fn, '__name__', fn)!r} declares inputs {unknown} it does "
                f"not take; its arguments are {names}"
            )
        declared = set(inputs)
    else:
        declared = set(INPUTS[family] if family is not None else ALL_INPUTS)
    return Spec(
        family=family,
        inputs=tuple(n for n in names if n in declared),
        knobs=tuple(n for n in names if n not in declared),
        required=frozenset(p.name for p in params if p.default is inspect.Parameter.empty),
        var_kw=any(p.kind == p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()),
    )


def register(
    name: str, family: str, *, inputs: tuple[str, ...] | None = None, overwrite: bool = False
) -> Callable[[Callable], Callable]:
    """Decorator: make `fn` reachable as `alignment.losses.get(name)`.

    `inputs` names its array arguments when they are not the family's usual ones (`INPUTS`).
    A name already bound to another function is refused (two modules claiming one name is a
    bug) unless `overwrite=True`, which replaces it: re-running a notebook cell that defines a
    loss.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    def deco(fn: Callable) -> Callable:
        if name in _LOSSES and _LOSSES[name].fn is not fn and not overwrite:
            raise ValueError(
                f"loss name {name!r} is already registered to {_LOSSES[name].fn}; "
                "pass overwrite=True to replace it (e.g. when re-running a "
                "notebook cell)"
            )
        _LOSSES[name] = _Entry(family, fn, make_spec(fn, family, inputs))
        return fn

    return deco
