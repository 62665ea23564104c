"""Rewards behind one signature: `reward_fn(RewardInputs) -> float32 [N]`.

    from alignment import rewards
    fn = rewards.make_reward(config.reward, tokenizer=tok, mesh=mesh)   # checked RewardFn
    r_N = fn(rewards.RewardInputs(prompts, responses, prompt_ids, response_ids))
    pref = rewards.make_preference(config.reward, tokenizer=tok)        # P(a > b | x)

Kinds: programmatic (`task_reward`: a task's gold score; `verifier_reward`: 1/0 from its
verifier), `reward_model` (an exported Bradley-Terry reward model scored at the last real token)
and `log_ratio` (sum_t log p_path(y_t|.) - log p_base(y_t|.) of two frozen models). Every reward
`make_reward` returns is wrapped by `checked`, so a NaN or a wrong shape fails naming the reward
and the row. No Flax here: models are loaded and merged through `alignment.models`.
"""

from __future__ import annotations

import numpy as np

from alignment.rewards import model as model_rewards
from alignment.rewards.base import RewardFn, RewardInputs, check_rewards, checked
from alignment.rewards.config import KINDS, check_reward_config, default_reward_config
from alignment.rewards.preference import PairwisePreference
from alignment.rewards.programmatic import task_reward, verifier_reward


def _scaled(fn: RewardFn, scale: float) -> RewardFn:
    if scale == 1.0:
        return fn

    def reward(inputs: RewardInputs) -> np.ndarray:
        return np.asarray(fn(inputs), np.float32) * np.float32(scale)

    return reward


def make_reward(cfg, *, tokenizer=None, mesh=None) -> RewardFn:
    """The checked reward a `config.reward` section describes (see `default_reward_config`).

    `tokenizer` supplies the EOS id that model rewards append (`reward.append_eos`); when None,
    the tokenizer saved in the reward folder is used. `mesh` places the frozen models' parameters.
    """
    check_reward_config(cfg)
    if cfg.kind == "task":
        fn, name = task_reward(cfg.task), f"task:{cfg.task}"
    elif cfg.kind == "verifier":
        fn, name = verifier_reward(cfg.task), f"verifier:{cfg.task}"
    else:
        eos_id = model_rewards.resolve_eos(cfg, tokenizer)
        if cfg.kind == "reward_model":
            fn = model_rewards.reward_model_reward(
                cfg.path,
                batch_size=cfg.batch_size,
                length_bucket=cfg.length_bucket,
                eos_id=eos_id,
                dtype=cfg.dtype,
                mesh=mesh,
            )
            name = f"reward_model:{cfg.path}"
        else:
            fn = model_rewards.log_ratio_reward(
                cfg.path,
                cfg.base_path,
                batch_size=cfg.batch_size,
                length_bucket=cfg.length_bucket,
                eos_id=eos_id,
                dtype=cfg.dtype,
                chunk_size=cfg.logprob_chunk_size,
                mesh=mesh,
            )
            name = f"log_ratio:{cfg.path}-{cfg.base_path}"
    return checked(_scaled(fn, float(cfg.scale)), name)


def make_preference(
    cfg, *, tokenizer=None, mesh=None, temperature: float | None = None
) -> PairwisePreference:
    """`PairwisePreference` over `make_reward(cfg)`; temperature defaults to reward.preference_temperature."""
    t = cfg.preference_temperature if temperature is None else temperature
    return PairwisePreference(make_reward(cfg, tokenizer=tokenizer, mesh=mesh), float(t))


__all__ = [
    "RewardInputs",
    "RewardFn",
    "checked",
    "check_rewards",
    "task_reward",
    "verifier_reward",
    "make_reward",
    "make_preference",
    "PairwisePreference",
    "default_reward_config",
    "check_reward_config",
    "KINDS",
]
