"""The one signature every reward shares, and the guard that checks what a reward returns.

    RewardFn = Callable[[RewardInputs], np.ndarray]   # float32 [N], one score per response

`RewardInputs` carries both the text (for programmatic scorers) and the token ids (for model
rewards) of N (prompt, response) pairs, so a learner builds it once and any reward reads what it
needs. `checked(fn, name)` wraps a reward so that a wrong type, shape or a NaN/Inf fails loudly
with the reward's name and the first bad row instead of silently poisoning the advantages.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class RewardInputs:
    """N (prompt, response) pairs as text and as token ids.

    prompts: decoded prompt texts as given to the policy, before templating.
    responses: decoded responses, EOS stripped.
    prompt_ids: token ids of the (templated) prompts, what the policy was conditioned on.
    response_ids: token ids of the responses, EOS stripped.
    """

    prompts: Sequence[str]
    responses: Sequence[str]
    prompt_ids: Sequence[Sequence[int]]
    response_ids: Sequence[Sequence[int]]

    def __post_init__(self):
        n = len(self.prompts)
        for field in ("responses", "prompt_ids", "response_ids"):
            if len(getattr(self, field)) != n:
                raise ValueError(
                    f"RewardInputs: {field} has {len(getattr(self, field))} entries but prompts "
                    f"has {n}"
                )

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def from_text(
        cls,
        prompts: Sequence[str],
        responses: Sequence[str],
        tokenizer=None,
        *,
        add_bos: bool = True,
    ) -> "RewardInputs":
        """Inputs built from text alone: ids from `tokenizer` (BOS + prompt as in training), or
        empty id lists when no tokenizer is given (enough for programmatic rewards)."""
        if len(prompts) != len(responses):
            raise ValueError(
                f"RewardInputs.from_text: {len(prompts)} prompts but {len(responses)} responses"
            )
        if tokenizer is None:
            return cls(list(prompts), list(responses), [[] for _ in prompts], [[] for _ in prompts])
        bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
        prompt_ids = [bos + list(tokenizer.encode(p)) for p in prompts]
        response_ids = [list(tokenizer.encode(r)) if r else [] for r in responses]
        return cls(list(prompts), list(responses), prompt_ids, response_ids)


RewardFn = Callable[[RewardInputs], np.ndarray]


def check_rewards(values, n: int, name: str) -> np.ndarray:
    """`values` as float32 [n], or a ValueError naming the reward `name` and the first bad row."""
    if isinstance(values, (list, tuple)):
        raise ValueError(
            f"reward {name!r} returned a {type(values).__name__}, expected a numpy array of shape "
            f"[{n}]" + (f" (and it has {len(values)} entries)" if len(values) != n else "")
        )
    if not hasattr(values, "shape") or not hasattr(values, "dtype"):
        raise ValueError(
            f"reward {name!r} returned {type(values).__name__}, expected a numpy array of shape [{n}]"
        )
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(
            f"reward {name!r} returned shape {arr.shape} for {n} responses; expected ({n},)"
        )
    if not (
        np.issubdtype(arr.dtype, np.floating)
        or np.issubdtype(arr.dtype, np.integer)
        or arr.dtype == np.bool_
    ):
        raise ValueError(
            f"reward {name!r} returned dtype {arr.dtype}, expected a real number per response"
        )
    arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"reward {name!r} returned {arr[row]} for row {row} ({int(bad.sum())} non-finite "
            f"of {n}); rewards must be finite"
        )
    return arr


def checked(fn: RewardFn, name: str) -> RewardFn:
    """`fn` guarded: non-array, wrong-shape or NaN/Inf output raises ValueError naming `name` and
    the first bad row; the result is always float32 [N]."""
    if not callable(fn):
        raise TypeError(f"reward {name!r} is not callable: {fn!r}")

    def guarded(inputs: RewardInputs) -> np.ndarray:
        if not isinstance(inputs, RewardInputs):
            raise TypeError(f"reward {name!r} expects RewardInputs, got {type(inputs).__name__}")
        return check_rewards(fn(inputs), len(inputs), name)

    guarded.__name__ = f"checked_{name}"
    guarded.reward_name = name
    guarded.wrapped = fn
    return guarded
