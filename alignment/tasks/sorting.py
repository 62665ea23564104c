"""List sorting with a graded quality, for revise-and-keep experiments (SEFT-style revisers).

Prompt `sort: 5 3 9 1`, demonstration `1 3 5 9`. Quality = fraction of adjacent pairs in
non-decreasing order, 1.0 for a sorted list; a response that is not a permutation of the
prompt's numbers is malformed and scores 0 (otherwise `1 2 3` would be a perfect answer to
every prompt). `details` explains the score; `corrupt` makes a strictly worse response, so
(worse, better) pairs for a reviser come for free.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import ClassVar

import numpy as np

from alignment.tasks import base

PROMPT_PREFIX = "sort: "
_SEPARATORS = re.compile(r"[\s,]+")


@dataclasses.dataclass(frozen=True)
class SortDetails:
    """Why a response got its score: `reason` is empty when it parsed as a permutation."""

    quality: float
    values: tuple[int, ...] | None  # the parsed response, None when it did not parse
    in_order_pairs: int
    num_pairs: int
    reason: str

    @property
    def ok(self) -> bool:
        return not self.reason


def parse_prompt(prompt: str) -> tuple[int, ...]:
    """The numbers of a `sort: ...` prompt; ValueError for anything else."""
    text = prompt.strip()
    if not text.startswith(PROMPT_PREFIX.strip()):
        raise ValueError(f"not a sorting prompt (expected {PROMPT_PREFIX!r}...): {prompt!r}")
    values = _parse_list(text[len(PROMPT_PREFIX.strip()) :])
    if isinstance(values, str) or not values:
        raise ValueError(f"sorting prompt {prompt!r} does not hold a list of integers")
    return values


def _parse_list(text: str) -> tuple[int, ...] | str:
    """The integers in `text` separated by spaces or commas, or a string saying why not."""
    tokens = [t for t in _SEPARATORS.split(text.strip()) if t]
    if not tokens:
        return "the response is empty"
    for i, token in enumerate(tokens):
        if not re.fullmatch(r"[-+]?\d+", token):
            return f"token {i} ({token!r}) is not an integer"
    return tuple(int(t) for t in tokens)


def in_order_pairs(values) -> int:
    """Number of adjacent pairs (v[i], v[i+1]) with v[i] <= v[i+1]."""
    return sum(a <= b for a, b in zip(values[:-1], values[1:]))


def details(prompt: str, response: str) -> SortDetails:
    """Quality of `response` to `prompt` and, when it is 0 for being malformed, the reason."""
    target = parse_prompt(prompt)
    parsed = _parse_list(response)
    if isinstance(parsed, str):
        return SortDetails(0.0, None, 0, len(target) - 1, parsed)
    if collections.Counter(parsed) != collections.Counter(target):
        missing = collections.Counter(target) - collections.Counter(parsed)
        extra = collections.Counter(parsed) - collections.Counter(target)
        reason = (
            f"not a permutation of the prompt's {len(target)} numbers "
            f"(got {len(parsed)}; missing {sorted(missing.elements())}, "
            f"extra {sorted(extra.elements())})"
        )
        return SortDetails(0.0, parsed, 0, len(target) - 1, reason)
    pairs = len(parsed) - 1
    good = in_order_pairs(parsed)
    return SortDetails(good / pairs if pairs else 1.0, parsed, good, pairs, "")


def quality(prompt: str, response: str) -> float:
    """Fraction of adjacent pairs in order; 0.0 for a response that is not a permutation."""
    return details(prompt, response).quality


def corrupt(response: str, k: int, seed: int) -> str:
    """A strictly worse `response`: up to `k` random swaps, each lowering the in-order pair count.

    Stops before `k` swaps once no single swap lowers the count further (e.g. `2 1 4 3`), so
    the result is always strictly worse than `response` when k >= 1. Raises ValueError when
    `response` does not parse, or when it cannot be made worse at all (no in-order pair of
    distinct values, or only ones no single swap can remove).
    """
    base.check_count(k, "k")
    values = _parse_list(response)
    if isinstance(values, str):
        raise ValueError(f"corrupt: cannot parse {response!r}: {values}")
    values = list(values)
    rng = np.random.default_rng(seed)
    for step in range(k):
        now = in_order_pairs(values)
        worse = []
        for i in range(len(values)):
            for j in range(i + 1, len(values)):
                values[i], values[j] = values[j], values[i]
                if in_order_pairs(values) < now:
                    worse.append((i, j))
                values[i], values[j] = values[j], values[i]
        if not worse:
            if step == 0:
                raise ValueError(
                    f"corrupt: no swap makes {response!r} worse (no single swap "
                    f"lowers its in-order pair count)"
                )
            break
        i, j = worse[rng.integers(len(worse))]
        values[i], values[j] = values[j], values[i]
    return " ".join(map(str, values))


@dataclasses.dataclass(frozen=True)
class SortingTask(base.Task):
    """Sort `length` integers drawn from `value_range` (both inclusive); gold = `quality`."""

    name: ClassVar[str] = "sorting"
    has_verifier: ClassVar[bool] = True

    length: tuple[int, int] = (4, 8)
    value_range: tuple[int, int] = (0, 99)
    distinct: bool = True

    def __post_init__(self):
        for field in ("length", "value_range"):  # lists from configs -> tuples
            object.__setattr__(self, field, tuple(getattr(self, field)))
        lo_len, hi_len = self.length
        if not 2 <= lo_len <= hi_len:
            raise ValueError(
                f"SortingTask.length must be (min, max) with 2 <= min <= max, got {self.length}"
            )
        lo, hi = self.value_range
        if lo > hi:
            raise ValueError(
                f"SortingTask.value_range must be (low, high) with low <= high, "
                f"got {self.value_range}"
            )
        if self.distinct and hi - lo + 1 < hi_len:
            raise ValueError(
                f"SortingTask: value_range {self.value_range} has fewer than "
                f"length[1]={hi_len} distinct values (set distinct=False?)"
            )

    def sample_list(self, rng: np.random.Generator) -> list[int]:
        n = int(rng.integers(self.length[0], self.length[1] + 1))
        lo, hi = self.value_range
        if self.distinct:
            return [int(x) + lo for x in rng.choice(hi - lo + 1, size=n, replace=False)]
        return [int(x) for x in rng.integers(lo, hi + 1, size=n)]

    def prompts(self, split: str, n: int, seed: int) -> list[str]:
        return base.sample_in_split(
            lambda rng: PROMPT_PREFIX + " ".join(map(str, self.sample_list(rng))),
            task=self.name,
            split=split,
            n=n,
            seed=seed,
            max_draws=50 * n + 1000,
        )

    def demonstrations(self, split: str, n: int, seed: int) -> list[tuple[str, str]]:
        return [
            (p, " ".join(map(str, sorted(parse_prompt(p))))) for p in self.prompts(split, n, seed)
        ]

    def gold_reward(self, prompt: str, response: str) -> float:
        return quality(prompt, response)

    def verify(self, prompt: str, response: str) -> bool:
        """Whether `response` is the prompt's numbers in non-decreasing order."""
        return details(prompt, response).quality == 1.0

    details = staticmethod(details)
    corrupt = staticmethod(corrupt)
