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
import importlib

from alignment.tasks.base import SPLITS, Task, split_of

# name -> (module, class); modules load on first use so an optional extra costs nothing.
_REGISTRY = {
    "arithmetic": ("alignment.tasks.arithmetic", "ArithmeticTask"),
    "reasoning_gym": ("alignment.tasks.reasoning_gym", "ReasoningGymTask"),
    "sentiment": ("alignment.tasks.sentiment", "SentimentTask"),
    "sorting": ("alignment.tasks.sorting", "SortingTask"),
}


def available() -> list[str]:
    """Names accepted by `get_task`."""
    return sorted(_REGISTRY)


def get_task(name: str, **kwargs) -> Task:
    """The task called `name`, built with `kwargs` as its knobs (its dataclass fields)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(available())}")
    module, cls_name = _REGISTRY[name]
    cls = getattr(importlib.import_module(module), cls_name)
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise TypeError(f"task {name!r} has no option(s) {unknown}; its options: {fields}")
    return cls(**kwargs)


__all__ = ["SPLITS", "Task", "available", "get_task", "split_of"]
