"""Rows drawn from an embedded task (`data.source = "task"`): demonstrations for SFT, and
gold-labelled preference pairs for reward models and DPO, with no files.

Pairs per task (one per prompt of the split, both responses scored by `task.gold_reward`; the
better one is `chosen`, pairs whose gold scores tie are re-drawn, never emitted):
  sentiment  two grammar continuations of different polarity (DPO's controlled-sentiment
             setting: continuations ranked by VADER)
  sorting    the sorted demonstration vs. a `corrupt`ed copy (1-2 order-breaking swaps)
  otherwise  the prompt's own demonstration vs. the demonstration of another prompt

`label_temperature > 0` replaces gold labels of the *train* split by Bradley-Terry draws
P(a > b) = sigmoid((g_a - g_b) / temperature) (`tasks.sentiment.noisy_bradley_terry_labels`):
the noisy raters a proxy reward is trained on (RSO, Liu et al., 2024). Held-out splits keep gold
labels, so held-out accuracy measures agreement with the gold scorer. Rows are a pure function
of (task, split, count, seed); the task's hash split keeps train and held-out prompts disjoint.
"""

from __future__ import annotations

import numpy as np

from alignment import tasks
from alignment.tasks import sentiment, sorting

_MAX_REDRAWS = 64


def pair_for(
    task, prompt: str, rng: np.random.Generator, others: list[str]
) -> tuple[str, str, float, float]:
    """Two responses to `prompt` with different gold scores: (a, b, gold_a, gold_b)."""
    for _ in range(_MAX_REDRAWS):
        if task.name == "sentiment":
            pa, pb = rng.choice(len(sentiment.POLARITIES), size=2, replace=False)
            a = sentiment.sample_continuation(rng, sentiment.POLARITIES[pa])
            b = sentiment.sample_continuation(rng, sentiment.POLARITIES[pb])
        elif task.name == "sorting":
            a = others[0]
            try:
                b = sorting.corrupt(a, int(rng.integers(1, 3)), int(rng.integers(2**31)))
            except ValueError:  # e.g. all items equal: nothing to corrupt
                return a, a, 0.0, 0.0
        else:
            a, b = others[0], others[1 + int(rng.integers(len(others) - 1))]
        ga, gb = float(task.gold_reward(prompt, a)), float(task.gold_reward(prompt, b))
        if ga != gb and a != b:
            return a, b, ga, gb
    return a, b, ga, gb


def task_rows(
    task_name: str, *, kind: str, split: str, n: int, seed: int, label_temperature: float
) -> list[dict[str, str]]:
    """`n` rows of `split`: {"prompt", "completion"} for kind "sft", {"prompt", "chosen",
    "rejected"} for kind "preference"; see the module docstring."""
    task = tasks.get_task(task_name)
    if kind == "sft":
        return [{"prompt": p, "completion": r} for p, r in task.demonstrations(split, n, seed)]
    try:  # a few spare prompts stand in for the rare ones with no second response of another score
        demos = task.demonstrations(split, n + max(8, n // 8), seed)
    except ValueError:
        demos = task.demonstrations(split, n, seed)
    rng = np.random.default_rng([seed, tasks.SPLITS.index(split), 0x5041495253])  # "PAIRS"
    rows, gold = [], []
    for i, (prompt, demo) in enumerate(demos):
        if len(rows) == n:
            break
        others = [demo] + [demos[(i + j) % len(demos)][1] for j in range(1, min(len(demos), 8))]
        a, b, ga, gb = pair_for(task, prompt, rng, others)
        if ga == gb or a == b:
            continue  # no distinguishable second response for this prompt (counted below)
        rows.append({"prompt": prompt, "a": a, "b": b})
        gold.append((ga, gb))
    if len(rows) < n:
        raise ValueError(
            f"data.source='task': task {task_name!r} gave {len(rows)} pairs with different gold scores "
            f"for {n} {split!r} prompts; {n - len(rows)} prompts had no second response with a different "
            "score (ask for fewer examples or another task)"
        )
    g = np.asarray(gold, np.float64)
    if label_temperature > 0 and split == "train":
        a_wins = sentiment.noisy_bradley_terry_labels(
            g[:, 0], g[:, 1], temperature=label_temperature, seed=seed
        )
    else:
        a_wins = g[:, 0] > g[:, 1]
    return [
        {
            "prompt": r["prompt"],
            "chosen": r["a"] if w else r["b"],
            "rejected": r["b"] if w else r["a"],
        }
        for r, w in zip(rows, a_wins)
    ]
