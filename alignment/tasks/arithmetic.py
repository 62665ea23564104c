"""Multi-step arithmetic with a final-answer verifier and a per-step checker.

A problem is a left-to-right chain `((a op1 b1) op2 b2) ...`, shown as
`compute: ((12+7)*3)-5`. Its solution is one equation per line and a final answer line:

    12+7=19
    19*3=57
    57-5=52
    answer: 52

This is the setting of "RL on incorrect synthetic data scales the efficiency of LLM math
reasoning by eight-fold" (Setlur et al., 2024) in miniature: `verify` checks the final answer,
`split_steps`/`step_prefixes` cut a response into steps and their prefixes for Monte-Carlo
step values, and `step_correctness` says which steps are right given the ones before them.
Demonstrations can carry spurious-but-harmless identity steps (`19+0=19`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

import numpy as np

from alignment.tasks import base

OPERATORS = ("+", "-", "*", "/")
PROMPT_PREFIX = "compute: "
# Steps that leave the running value unchanged; harmless anywhere in a solution.
IDENTITY_OPS = (("+", 0), ("-", 0), ("*", 1), ("/", 1))
_SPURIOUS_OPS = (("+", 0), ("-", 0), ("*", 1))

# Unicode look-alikes that a model (or a person) may write for the ASCII operators.
_NORMALISE = str.maketrans({"\u2212": "-", "\u00d7": "*", "\u00f7": "/", "\u2013": "-"})
_INT = r"[-+]?\s*\d+"
_OPERAND = rf"\(\s*{_INT}\s*\)|{_INT}"
_STEP = re.compile(rf"^\s*({_OPERAND})\s*([-+*/])\s*({_OPERAND})\s*=\s*({_OPERAND})\s*\.?\s*$")
_ANSWER_VALUE = re.compile(rf"^({_INT})\s*\.?$")
_PROMPT_HEAD = re.compile(r"^\(*(-?\d+)")
_PROMPT_OP = re.compile(r"\)?([-+*/])(\(-\d+\)|\d+)")


def apply(op: str, a: int, b: int) -> int:
    """`a op b` on ints; `/` is exact division (the generator only emits exact quotients)."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0 or a % b:
            raise ValueError(f"{a}/{b} is not an exact integer division")
        return a // b
    raise ValueError(f"unknown operator {op!r}; valid: {OPERATORS}")


def _apply_many(op: str, a: int, b_N: np.ndarray) -> np.ndarray:
    """`a op b` for every b in `b_N` (division floors; the caller keeps only exact ones)."""
    if op == "/":
        return a // np.where(b_N == 0, 1, b_N)
    return {"+": np.add, "-": np.subtract, "*": np.multiply}[op](a, b_N)


def _fmt(b: int) -> str:
    return f"({b})" if b < 0 else str(b)


def _parse_int(text: str) -> int:
    return int(text.replace(" ", "").strip("()"))


@dataclasses.dataclass(frozen=True)
class Problem:
    """A chain `first op1 b1 op2 b2 ...` evaluated left to right."""

    first: int
    ops: tuple[tuple[str, int], ...]

    def values(self) -> list[int]:
        """Running values: [first, after op 1, ..., answer]."""
        out = [self.first]
        for op, b in self.ops:
            out.append(apply(op, out[-1], b))
        return out

    @property
    def answer(self) -> int:
        return self.values()[-1]

    @property
    def prompt(self) -> str:
        expr = str(self.first)
        for i, (op, b) in enumerate(self.ops):
            expr = (f"({expr})" if i else expr) + op + _fmt(b)
        return PROMPT_PREFIX + expr

    def solution_steps(self) -> list[str]:
        """One `a op b = c` line per operation, then `answer: <value>`."""
        vals = self.values()
        steps = [f"{vals[i]}{op}{_fmt(b)}={vals[i + 1]}" for i, (op, b) in enumerate(self.ops)]
        return steps + [f"answer: {vals[-1]}"]


def parse_problem(prompt: str) -> Problem:
    """The Problem behind a prompt written by `Problem.prompt`; ValueError for anything else."""
    text = prompt.strip()
    if not text.startswith(PROMPT_PREFIX.strip()):
        raise ValueError(f"not an arithmetic prompt (expected {PROMPT_PREFIX!r}...): {prompt!r}")
    expr = text[len(PROMPT_PREFIX.strip()) :].replace(" ", "")
    head = _PROMPT_HEAD.match(expr)
    ops, pos = [], head.end() if head else 0
    while head and pos < len(expr):
        m = _PROMPT_OP.match(expr, pos)
        if not m:
            break
        ops.append((m.group(1), _parse_int(m.group(2))))
        pos = m.end()
    if not head or not ops or pos != len(expr):
        raise ValueError(f"cannot parse arithmetic prompt {prompt!r}")
    problem = Problem(int(head.group(1)), tuple(ops))
    # Round trip: a hand-edited prompt with stray brackets must not be silently reinterpreted.
    if problem.prompt.replace(" ", "") != (PROMPT_PREFIX.strip() + expr):
        raise ValueError(
            f"arithmetic prompt {prompt!r} is not in canonical form (expected {problem.prompt!r})"
        )
    try:
        problem.values()
    except ValueError as e:
        raise ValueError(f"arithmetic prompt {prompt!r}: {e}") from None
    return problem


def parse_answer(response: str) -> int | None:
    """The integer on the last `answer:` line; None when absent or malformed (never raises)."""
    text = base.answer_text(response.translate(_NORMALISE))
    if text is None:
        return None
    m = _ANSWER_VALUE.match(text)
    return _parse_int(m.group(1)) if m else None


def parse_step(step: str) -> tuple[int, str, int, int] | None:
    """`(a, op, b, c)` of a step `a op b = c`; None when the line is not such an equation."""
    m = _STEP.match(step.translate(_NORMALISE))
    if not m:
        return None
    return _parse_int(m.group(1)), m.group(2), _parse_int(m.group(3)), _parse_int(m.group(4))


def step_spans(response: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each non-blank `\n`-separated line, stripped."""
    spans, pos = [], 0
    for line in response.split("\n"):
        stripped = line.strip()
        if stripped:
            start = pos + line.index(stripped)
            spans.append((start, start + len(stripped)))
        pos += len(line) + 1
    return spans


def split_steps(response: str) -> list[str]:
    """The steps of `response`: its non-blank lines, stripped (the answer line is the last step)."""
    return [response[s:e] for s, e in step_spans(response)]


def step_prefixes(response: str) -> list[str]:
    """Exact string prefixes of `response`: [0] is empty, [i] ends after step i and its newline.

    For Monte-Carlo step values (Q of a prefix = success rate of rollouts continued from it):
    `len(step_prefixes(r)) == len(split_steps(r)) + 1` and the last prefix is `r` itself.
    """
    prefixes = [""]
    for _, end in step_spans(response):
        newline = response.find("\n", end)
        prefixes.append(response if newline < 0 else response[: newline + 1])
    return prefixes


def step_correctness(prompt: str, response: str) -> list[bool]:
    """For each step of `response`, whether it is right given the steps before it.

    A step `a op b = c` is right when c == a op b, `a` is the value the previous step wrote
    (the first operand at the start; an earlier error is not charged twice), and `op b` is the
    problem's next pending operation, or an identity (+0, -0, *1, /1) that leaves it pending.
    Any other equation is a wrong attempt at the pending operation and uses it up. The answer
    line is right when no operation is pending and it states the current value. Unparseable
    lines are wrong and change nothing.
    """
    problem = parse_problem(prompt)
    pending = list(problem.ops)
    current = problem.first
    out = []
    for step in split_steps(response):
        if base.answer_text(step.translate(_NORMALISE)) is not None:
            out.append(not pending and parse_answer(step) == current)
            continue
        parsed = parse_step(step)
        if parsed is None:
            out.append(False)
            continue
        a, op, b, c = parsed
        try:
            arithmetic_ok = apply(op, a, b) == c
        except ValueError:
            arithmetic_ok = False
        ok = arithmetic_ok and a == current
        if pending and (op, b) == pending[0]:
            pending.pop(0)
        elif (op, b) in IDENTITY_OPS:
            pass
        elif pending:
            pending.pop(0)
            ok = False
        else:
            ok = False
        out.append(ok)
        current = c
    return out


def first_error(prompt: str, response: str) -> int | None:
    """Index of the first wrong step (see `step_correctness`), None when every step is right."""
    for i, ok in enumerate(step_correctness(prompt, response)):
        if not ok:
            return i
    return None


def inject_spurious_steps(problem: Problem, rng: np.random.Generator, prob: float) -> list[str]:
    """`problem`'s solution with an identity step (`19+0=19`) after each step w.p. `prob`."""
    steps = problem.solution_steps()
    vals = problem.values()
    out = []
    for i, step in enumerate(steps[:-1]):
        out.append(step)
        if rng.random() < prob:
            op, b = _SPURIOUS_OPS[rng.integers(len(_SPURIOUS_OPS))]
            out.append(f"{vals[i + 1]}{op}{b}={vals[i + 1]}")
    return out + steps[-1:]


@dataclasses.dataclass(frozen=True)
class ArithmeticTask(base.Task):
    """Chains of `num_ops` operations on operands drawn from `operand_range` (inclusive).

    gold_reward = 1.0 when the final answer is right, else 0.0. `max_abs_value` bounds every
    intermediate value; `/` only appears as an exact division.
    """

    name: ClassVar[str] = "arithmetic"
    has_verifier: ClassVar[bool] = True

    num_ops: tuple[int, int] = (2, 4)  # inclusive range of operations per problem
    operand_range: tuple[int, int] = (1, 20)  # inclusive
    operators: tuple[str, ...] = ("+", "-", "*")
    max_abs_value: int = 10_000
    spurious_step_prob: float = 0.0  # chance of an identity step after each demonstration step

    def __post_init__(self):
        for field in ("num_ops", "operand_range", "operators"):  # lists from configs -> tuples
            object.__setattr__(self, field, tuple(getattr(self, field)))
        lo_ops, hi_ops = self.num_ops
        if not 1 <= lo_ops <= hi_ops:
            raise ValueError(
                f"ArithmeticTask.num_ops must be (min, max) with 1 <= min <= max, "
                f"got {self.num_ops}"
            )
        lo, hi = self.operand_range
        if lo > hi:
            raise ValueError(
                f"ArithmeticTask.operand_range must be (low, high) with low <= high, "
                f"got {self.operand_range}"
            )
        bad = [op for op in self.operators if op not in OPERATORS]
        if bad or not self.operators:
            raise ValueError(
                f"ArithmeticTask.operators must be a non-empty subset of {OPERATORS}, "
                f"got {self.operators}"
            )
        if self.max_abs_value < max(abs(lo), abs(hi)):
            raise ValueError(
                f"ArithmeticTask.max_abs_value={self.max_abs_value} is below the "
                f"operand range {self.operand_range}"
            )
        if not 0.0 <= self.spurious_step_prob <= 1.0:
            raise ValueError(
                f"ArithmeticTask.spurious_step_prob must be in [0, 1], "
                f"got {self.spurious_step_prob}"
            )

    def sample_problem(self, rng: np.random.Generator) -> Problem:
        """One problem; operations that would leave [-max_abs_value, max_abs_value] are skipped."""
        lo, hi = self.operand_range
        operands = np.arange(lo, hi + 1, dtype=np.int64)
        for _ in range(100):
            n_ops = int(rng.integers(self.num_ops[0], self.num_ops[1] + 1))
            first = int(rng.integers(lo, hi + 1))
            value, ops = first, []
            for _ in range(n_ops):
                choices = []
                for op in self.operators:
                    with np.errstate(divide="ignore", invalid="ignore"):
                        ok = np.abs(_apply_many(op, value, operands)) <= self.max_abs_value
                    if op == "/":
                        ok &= (operands != 0) & (value % np.where(operands == 0, 1, operands) == 0)
                    if ok.any():
                        choices.append((op, operands[ok]))
                if not choices:
                    break
                op, bs = choices[rng.integers(len(choices))]
                b = int(bs[rng.integers(len(bs))])
                ops.append((op, b))
                value = apply(op, value, b)
            if len(ops) == n_ops:
                return Problem(first, tuple(ops))
        raise ValueError(
            f"{self} cannot build problems: no operation keeps values within "
            f"max_abs_value (try a wider operand_range or more operators)"
        )

    def prompts(self, split: str, n: int, seed: int) -> list[str]:
        return base.sample_in_split(
            lambda rng: self.sample_problem(rng).prompt,
            task=self.name,
            split=split,
            n=n,
            seed=seed,
            max_draws=50 * n + 1000,
        )

    def demonstrations(self, split: str, n: int, seed: int) -> list[tuple[str, str]]:
        rng = base.make_rng(self.name, split, seed, "demonstrations")
        out = []
        for prompt in self.prompts(split, n, seed):
            steps = inject_spurious_steps(parse_problem(prompt), rng, self.spurious_step_prob)
            out.append((prompt, "\n".join(steps)))
        return out

    def verify(self, prompt: str, response: str) -> bool:
        """Whether the last `answer:` line of `response` states the problem's answer."""
        answer = parse_answer(response)
        return answer is not None and answer == parse_problem(prompt).answer

    def gold_reward(self, prompt: str, response: str) -> float:
        return float(self.verify(prompt, response))

    # Methods so that code holding only a Task can reach the step tools.
    split_steps = staticmethod(split_steps)
    step_prefixes = staticmethod(step_prefixes)
    step_correctness = staticmethod(step_correctness)
    first_error = staticmethod(first_error)
