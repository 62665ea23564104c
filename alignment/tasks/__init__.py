"""Embedded tasks with programmatic gold rewards: prompts, demonstrations, verifiers.

    task = tasks.get_task("arithmetic", num_ops=(2, 3))
    prompts = task.prompts("train", 64, seed=0)
    pairs = task.demonstrations("train", 64, seed=0)  # [(prompt, response)]
    task.gold_reward(prompt, response)                 # float; task.verify(...) -> bool

Pure Python + numpy. `reasoning_gym` needs the optional reasoning-gym package, imported only
when that task is built.
"""

from __future__ import annotations

import dataclasses

from alignment.tasks.arithmetic import ArithmeticTask
from alignment.tasks.base import SPLITS, Task, split_of
from alignment.tasks.reasoning_gym import ReasoningGymTask
from alignment.tasks.sentiment import SentimentTask
from alignment.tasks.sorting import SortingTask

# name -> task class
_REGISTRY = {
    "arithmetic": ArithmeticTask,
    "reasoning_gym": ReasoningGymTask,
    "sentiment": SentimentTask,
    "sorting": SortingTask,
}


def available() -> list[str]:
    """Names accepted by `get_task`."""
    return sorted(_REGISTRY)


def get_task(name: str, **kwargs) -> Task:
    """The task called `name`, built with `kwargs` as its knobs (its dataclass fields)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(available())}")
    cls = _REGISTRY[name]
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise TypeError(f"task {name!r} has no option(s) {unknown}; its options: {fields}")
    return cls(**kwargs)


__all__ = ["SPLITS", "Task", "available", "get_task", "split_of"]
