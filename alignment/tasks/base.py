"""The `Task` protocol shared by the embedded tasks, and the helpers they all use.

A task is a small frozen dataclass whose fields are its difficulty knobs. It hands out prompts
and demonstrations as plain strings (tokenisation happens elsewhere) and scores a response
with a programmatic gold reward. Splits are held out by construction: every candidate prompt
is assigned to exactly one split by a stable hash of its text (`split_of`), so no seed or
count can make a test prompt appear in train. Randomness comes from numpy generators seeded
from (task name, split, seed, stream), never from Python's salted `hash`, so a seed gives the
same prompts in every process.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import re
import zlib
from typing import Callable, ClassVar, Sequence

import numpy as np

# Fractions of the prompt space that each split owns (by stable hash of the prompt text).
SPLIT_FRACTIONS = (("train", 0.8), ("validation", 0.1), ("test", 0.1))
SPLITS = tuple(name for name, _ in SPLIT_FRACTIONS)


@dataclasses.dataclass(frozen=True)
class Task(abc.ABC):
    """Protocol of an embedded task: prompts, demonstrations and a programmatic gold reward.

    Subclasses set `name` and `has_verifier`, and implement `prompts`, `demonstrations` and
    `gold_reward`; tasks whose reward is a pass/fail check also implement `verify`.
    """

    name: ClassVar[str] = "task"
    has_verifier: ClassVar[bool] = False

    @abc.abstractmethod
    def prompts(self, split: str, n: int, seed: int) -> list[str]:
        """`n` distinct prompts of `split`, the same list for the same (split, n, seed)."""

    @abc.abstractmethod
    def demonstrations(self, split: str, n: int, seed: int) -> list[tuple[str, str]]:
        """`n` (prompt, response) pairs whose prompts are `prompts(split, n, seed)`."""

    @abc.abstractmethod
    def gold_reward(self, prompt: str, response: str) -> float:
        """Gold score of `response` to `prompt`; a malformed response scores low, never raises."""

    def verify(self, prompt: str, response: str) -> bool:
        """Whether `response` solves `prompt` (tasks with `has_verifier` only)."""
        raise NotImplementedError(
            f"task {self.name!r} has no verifier: its gold reward is graded, use gold_reward()"
        )

    def gold_rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """`gold_reward` over aligned lists, as a float32 array of shape [N]."""
        if len(prompts) != len(responses):
            raise ValueError(
                f"{self.name}.gold_rewards: {len(prompts)} prompts but {len(responses)} responses"
            )
        return np.asarray(
            [self.gold_reward(p, r) for p, r in zip(prompts, responses)], dtype=np.float32
        )


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


def check_count(n: int, what: str = "n") -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"{what} must be a non-negative int, got {n!r}")


def split_of(key: str) -> str:
    """The split that owns `key`: a stable hash of its text mapped onto SPLIT_FRACTIONS."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    u = int.from_bytes(digest, "little") / 2.0**64
    acc = 0.0
    for name, fraction in SPLIT_FRACTIONS:
        acc += fraction
        if u < acc:
            return name
    return SPLIT_FRACTIONS[-1][0]


def make_rng(task: str, split: str, seed: int, stream: str) -> np.random.Generator:
    """A numpy generator for (task, split, seed, stream); streams keep prompts, responses apart."""
    words = [
        zlib.crc32(task.encode()),
        SPLITS.index(split),
        int(seed) & 0xFFFFFFFF,
        int(seed) >> 32 & 0xFFFFFFFF,
        zlib.crc32(stream.encode()),
    ]
    return np.random.default_rng(words)


def sample_in_split(
    draw: Callable[[np.random.Generator], str],
    *,
    task: str,
    split: str,
    n: int,
    seed: int,
    max_draws: int,
) -> list[str]:
    """`n` distinct prompts of `split`: draw candidates, keep those the split owns, skip repeats."""
    check_split(split)
    check_count(n)
    rng = make_rng(task, split, seed, "prompts")
    out, seen = [], set()
    for _ in range(max_draws):
        if len(out) == n:
            break
        candidate = draw(rng)
        if candidate not in seen and split_of(candidate) == split:
            seen.add(candidate)
            out.append(candidate)
    if len(out) < n:
        raise ValueError(
            f"task {task!r}: found only {len(out)} distinct {split!r} prompts of the {n} asked for "
            f"in {max_draws} draws; the prompt space is too small for this request (widen the "
            f"task's difficulty knobs or ask for fewer)"
        )
    return out


def choose_from_pool(pool: Sequence[str], *, task: str, split: str, n: int, seed: int) -> list[str]:
    """`n` distinct prompts of `split` from a finite, enumerated prompt pool."""
    check_split(split)
    check_count(n)
    owned = [p for p in pool if split_of(p) == split]
    if n > len(owned):
        raise ValueError(
            f"task {task!r}: split {split!r} holds {len(owned)} distinct prompts, "
            f"{n} were asked for"
        )
    rng = make_rng(task, split, seed, "prompts")
    return [owned[i] for i in rng.permutation(len(owned))[:n]]


_ANSWER_LINE = re.compile(
    r"^\s*(?:final\s+)?answer\b\s*(?:is\b)?\s*[:=]?\s*(.*?)\s*$", re.IGNORECASE
)


def answer_text(response: str) -> str | None:
    """The text after the last `answer:` line of `response` (case and spacing free), else None."""
    for line in reversed(response.split("\n")):
        match = _ANSWER_LINE.match(line)
        if match:
            return match.group(1)
    return None
