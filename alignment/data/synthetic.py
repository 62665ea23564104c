"""A deterministic, learnable toy dataset: sorting short lists of digits.

prompt   "sort: 5 3 9 1\\n"
chosen   "1 3 5 9"          (sorted; also the SFT completion)
rejected "1 5 3 9"          (sorted, then one adjacent pair of unequal items swapped)

The rejected answer is nearly right, so a preference must be learnt from the ordering itself,
while SFT on the chosen answer is learnable by a tiny model in a few hundred steps. Train and
eval rows never share a prompt.
"""

from __future__ import annotations

import numpy as np

PROMPT_PREFIX = "sort: "


def _one(
    rng: np.random.Generator, *, min_items: int, max_items: int, max_value: int
) -> tuple[int, ...]:
    n = int(rng.integers(min_items, max_items + 1))
    return tuple(int(x) for x in rng.integers(0, max_value + 1, size=n))


def make_row(items: tuple[int, ...], rng: np.random.Generator) -> dict[str, str]:
    """Prompt/chosen/rejected/completion strings for one list (needs two distinct values)."""
    sorted_items = sorted(items)
    swappable = [i for i in range(len(sorted_items) - 1) if sorted_items[i] != sorted_items[i + 1]]
    j = swappable[int(rng.integers(len(swappable)))]
    rejected = list(sorted_items)
    rejected[j], rejected[j + 1] = rejected[j + 1], rejected[j]
    chosen = " ".join(map(str, sorted_items))
    return {
        "prompt": PROMPT_PREFIX + " ".join(map(str, items)) + "\n",
        "chosen": chosen,
        "rejected": " ".join(map(str, rejected)),
        "completion": chosen,
    }


def is_sorted_answer(prompt: str, answer: str) -> bool:
    """Verifier: does `answer` list the prompt's numbers in ascending order?"""
    items = sorted(int(x) for x in prompt[len(PROMPT_PREFIX) :].split())
    try:
        got = [int(x) for x in answer.split()]
    except ValueError:
        return False
    return got == items


def synthetic_rows(
    split: str,
    *,
    seed: int,
    num_examples: int,
    num_eval_examples: int,
    min_items: int,
    max_items: int,
    max_value: int,
) -> list[dict[str, str]]:
    """Rows of `split` ("train" or any other name = held out), a pure function of the args."""
    if max_items < 2 or max_value < 1:
        raise ValueError("synthetic sorting needs max_items >= 2 and max_value >= 1")
    kw = dict(min_items=max(min_items, 2), max_items=max_items, max_value=max_value)
    space = sum((max_value + 1) ** n for n in range(kw["min_items"], max_items + 1))
    if num_examples + num_eval_examples > space // 2:
        raise ValueError(
            f"synthetic: {num_examples}+{num_eval_examples} distinct lists requested "
            f"but only {space} exist; raise max_items or max_value"
        )

    def draw(rng, count, exclude):
        seen, rows = set(exclude), []
        while len(rows) < count:
            items = _one(rng, **kw)
            if items in seen or len(set(items)) < 2:
                continue
            seen.add(items)
            rows.append((items, make_row(items, rng)))
        return rows

    train = draw(np.random.default_rng([seed, 0]), num_examples, ())
    if split == "train":
        return [r for _, r in train]
    held_out = draw(np.random.default_rng([seed, 1]), num_eval_examples, [i for i, _ in train])
    return [r for _, r in held_out]
