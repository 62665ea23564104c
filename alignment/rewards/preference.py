"""Pairwise preference model: P(a > b | x) from any reward, Bradley-Terry style.

    P(a > b | x) = sigmoid((r(x, a) - r(x, b)) / temperature)      (Bradley & Terry, 1952)

With a reward model this is the model's own preference probability (temperature 1); with a
task's gold scorer the temperature sets how noisy simulated raters are (near 0: always the
better response; large: coin flips), the labelling used by RSO (Liu et al., 2024).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from alignment.rewards.base import RewardFn, RewardInputs, check_rewards


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


@dataclasses.dataclass(frozen=True)
class PairwisePreference:
    """`pref(inputs_a, inputs_b) -> P(a > b | x)` float32 [N]; `pref.sample(...)` draws labels."""

    reward_fn: RewardFn
    temperature: float = 1.0

    def __post_init__(self):
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"PairwisePreference.temperature must be > 0, got {self.temperature}")

    def _scores(self, inputs_a: RewardInputs, inputs_b: RewardInputs):
        if len(inputs_a) != len(inputs_b):
            raise ValueError(
                f"PairwisePreference: {len(inputs_a)} responses a but {len(inputs_b)} responses b"
            )
        for i, (pa, pb) in enumerate(zip(inputs_a.prompts, inputs_b.prompts)):
            if pa != pb:
                raise ValueError(
                    f"PairwisePreference: row {i} compares responses to different prompts "
                    f"({pa!r} vs {pb!r})"
                )
        name = getattr(self.reward_fn, "reward_name", getattr(self.reward_fn, "__name__", "reward"))
        ra = check_rewards(self.reward_fn(inputs_a), len(inputs_a), name).astype(np.float64)
        rb = check_rewards(self.reward_fn(inputs_b), len(inputs_b), name).astype(np.float64)
        return ra, rb

    def __call__(self, inputs_a: RewardInputs, inputs_b: RewardInputs) -> np.ndarray:
        ra, rb = self._scores(inputs_a, inputs_b)
        return _sigmoid((ra - rb) / self.temperature).astype(np.float32)

    def sample(self, inputs_a: RewardInputs, inputs_b: RewardInputs, *, seed: int) -> np.ndarray:
        """Bool [N]: True where a is preferred, drawn with probability P(a > b | x)."""
        p = self(inputs_a, inputs_b)
        return np.random.default_rng(seed).random(p.shape) < p
