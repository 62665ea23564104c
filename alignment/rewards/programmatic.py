"""Rewards from the embedded tasks: a task's graded gold score, or 1/0 from its verifier."""

from __future__ import annotations

import numpy as np

from alignment import tasks
from alignment.rewards.base import RewardFn, RewardInputs


def _task(task):
    if isinstance(task, str):
        return tasks.get_task(task)
    return task


def task_reward(task) -> RewardFn:
    """r(x, y) = task.gold_reward(x, y) (a task object or an embedded task's name)."""
    task = _task(task)

    def reward(inputs: RewardInputs) -> np.ndarray:
        return task.gold_rewards(list(inputs.prompts), list(inputs.responses))

    reward.__name__ = f"task_reward_{task.name}"
    return reward


def verifier_reward(task) -> RewardFn:
    """r(x, y) = 1 if task.verify(x, y) else 0 (tasks with a verifier only)."""
    task = _task(task)
    if not task.has_verifier:
        raise ValueError(
            f"task {task.name!r} has no verifier (its gold reward is graded): use "
            "reward.kind='task' instead of 'verifier'"
        )

    def reward(inputs: RewardInputs) -> np.ndarray:
        return np.asarray(
            [1.0 if task.verify(p, r) else 0.0 for p, r in zip(inputs.prompts, inputs.responses)],
            np.float32,
        )

    reward.__name__ = f"verifier_reward_{task.name}"
    return reward
