"""Adapter for `reasoning-gym` procedural datasets (optional extra: `pip install reasoning-gym`).

reasoning-gym (Open-Thought) generates problems offline from templates, e.g. `gsm_symbolic`
(GSM8K-style word problems with symbolic variants, Mirzadeh et al., 2024), each with its own
answer checker. This adapter gives them the `Task` protocol: prompts are the dataset's
questions (held out across splits by the same hash rule as every task), a response's answer
is its last `answer:` line or else its last `<answer>...</answer>` tag (reasoning-gym's own
convention), and the gold reward is the dataset's `score_answer` (1.0 correct; some datasets
give small partial credit). Demonstrations use the dataset's chain of thought when it has one.

Scoring needs the generated entry behind a prompt, so `gold_reward` only knows prompts that
this task instance has handed out through `prompts` or `demonstrations`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar, Mapping

from alignment.tasks import base

INSTALL_HINT = (
    "the 'reasoning_gym' task needs the optional reasoning-gym package: "
    "pip install reasoning-gym  (or: pip install 'alignment[reasoning]')"
)
_COT_ANSWER = re.compile(r"^\s*####\s*(.*?)\s*$", re.MULTILINE)


def _import_reasoning_gym():
    try:
        import reasoning_gym  # optional heavy dependency: pip install 'alignment[reasoning]'
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return reasoning_gym


def extract_answer(response: str) -> str | None:
    """The last `answer:` line's text, else the last `<answer>...</answer>` tag's, else None."""
    text = base.answer_text(response)
    if text is not None:
        return text
    tags = re.findall(r"<answer>\s?(.*?)\s?</answer>", response, flags=re.DOTALL)
    return tags[-1].strip() if tags else None


@dataclasses.dataclass(frozen=True)
class ReasoningGymTask(base.Task):
    """A reasoning-gym dataset as a Task; `options` are passed to its config.

    `pool_size` is the number of items each seed's generator can hand out; a request whose
    split does not hold enough distinct questions among them fails with a clear error.
    """

    name: ClassVar[str] = "reasoning_gym"
    has_verifier: ClassVar[bool] = True

    dataset: str = "gsm_symbolic"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    pool_size: int = 10_000
    # prompt -> (dataset object, entry); filled by prompts(), read by gold_reward().
    _entries: dict = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self):
        rg = _import_reasoning_gym()
        if self.dataset not in rg.factory.DATASETS:
            raise ValueError(
                f"unknown reasoning-gym dataset {self.dataset!r}; valid: "
                f"{', '.join(sorted(rg.factory.DATASETS))}"
            )
        object.__setattr__(self, "options", dict(self.options))
        if self.pool_size < 1:
            raise ValueError(f"ReasoningGymTask.pool_size must be >= 1, got {self.pool_size}")

    def __hash__(self):
        return hash((self.dataset, tuple(sorted(self.options.items())), self.pool_size))

    def _generator(self, split: str, seed: int):
        rg = _import_reasoning_gym()
        rng = base.make_rng(f"{self.name}/{self.dataset}", split, seed, "dataset-seed")
        return rg.create_dataset(
            self.dataset, seed=int(rng.integers(2**31)), size=self.pool_size, **self.options
        )

    def _entries_for(self, split: str, n: int, seed: int) -> list[dict]:
        base.check_split(split)
        base.check_count(n)
        dataset = self._generator(split, seed)
        out, seen = [], set()
        for idx in range(self.pool_size):
            if len(out) == n:
                break
            entry = dataset[idx]
            question = entry["question"]
            if question in seen or base.split_of(question) != split:
                continue
            seen.add(question)
            previous = self._entries.get(question)
            if previous is not None and str(previous[1]["answer"]) != str(entry["answer"]):
                raise ValueError(
                    f"reasoning-gym {self.dataset}: question {question!r} was "
                    f"generated with two answers ({previous[1]['answer']!r}, "
                    f"{entry['answer']!r}); it cannot be scored by text alone"
                )
            self._entries[question] = (dataset, entry)
            out.append(entry)
        if len(out) < n:
            raise ValueError(
                f"reasoning-gym {self.dataset}: split {split!r} got only {len(out)} "
                f"distinct questions of {n} among pool_size={self.pool_size} items"
            )
        return out

    def prompts(self, split: str, n: int, seed: int) -> list[str]:
        return [e["question"] for e in self._entries_for(split, n, seed)]

    def demonstrations(self, split: str, n: int, seed: int) -> list[tuple[str, str]]:
        out = []
        for entry in self._entries_for(split, n, seed):
            answer_line = f"answer: {entry['answer']}"
            cot = entry["metadata"].get("answer_cot")  # optional in reasoning-gym's schema
            if cot:
                body = _COT_ANSWER.sub("", cot).rstrip()
                out.append((entry["question"], f"{body}\n{answer_line}"))
            else:
                out.append((entry["question"], answer_line))
        return out

    def gold_reward(self, prompt: str, response: str) -> float:
        """The dataset's own `score_answer` on the extracted answer (0.0 when there is none)."""
        found = self._entries.get(prompt)
        if found is None:
            raise KeyError(
                f"reasoning-gym {self.dataset}: prompt {prompt[:80]!r}... was not "
                f"handed out by this task instance's prompts()/demonstrations(), so "
                f"its answer is unknown"
            )
        dataset, entry = found
        return float(dataset.score_answer(extract_answer(response), entry))

    def verify(self, prompt: str, response: str) -> bool:
        return self.gold_reward(prompt, response) == 1.0
