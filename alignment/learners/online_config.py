"""Defaults shared by the online learners' configs (policy-gradient and pairwise online loops).

from alignment.learners.online_config import online_config
c = online_config("grpo", {"tiny": True, "task": "sorting"}, "grpo")
"""

from __future__ import annotations

import ml_collections

from alignment import rewards
from alignment.engine.config import base_config

# tiny runs: short prompts and answers that a 2-layer character-level model can learn
TINY_TASKS = {
    "sorting": {"length": (3, 4), "value_range": (0, 9)},
    "arithmetic": {"num_ops": (1, 1), "operand_range": (1, 9), "operators": ("+",)},
    "sentiment": {},
}


def online_config(algorithm: str, args: dict, loss: str) -> ml_collections.ConfigDict:
    """The defaults shared by the online configs (`configs/{ppo,grpo,sr_ppo,online_dpo,sail}.py`):
    a `preference` engine config of kind `online` with the `online` section for `algorithm`,
    the task's reward, and `loss` with its defaults; `args` holds `tiny` and `task`."""
    tiny = bool(args["tiny"])
    c = base_config("preference", {"tiny": tiny, "loss": loss})
    c.kind = "online"
    c.num_train_steps = 3 if tiny else 500
    c.checkpoint_every_steps = 2 if tiny else 50
    c.eval_every_steps = 0  # evaluation: python -m experiments.evaluate --workdir DIR
    c.task = str(args["task"])
    c.optim.learning_rate = 1e-4 if tiny else 1e-6
    c.optim.warmup_steps = 0 if tiny else 10
    c.optim.schedule = "constant"
    c.online = ml_collections.ConfigDict(
        {
            "algorithm": algorithm,
            "task": c.task,
            # knobs of the task (alignment.tasks.get_task(task, **task_kwargs))
            "task_kwargs": dict(TINY_TASKS[c.task]) if tiny else {},
            "prompt_pool": 512 if tiny else 8192,  # distinct train prompts walked in a seeded order
            "num_prompts": 4 if tiny else 32,  # prompts per step
            "group_size": 4,  # samples per prompt (contiguous groups)
            # prompts are left-padded to this; longer ones fail
            "max_prompt_len": 16 if tiny else 128,
            "max_new_tokens": 12 if tiny else 256,
            "temperature": 1.0,
            "top_k": 0,  # 0 = off
            "top_p": 1.0,  # 1.0 = off
            "ppo_epochs": 2,  # passes over each rollout batch
            "num_minibatches": 2,  # updates per pass
            "advantage": "gae",  # group | group_mean | rloo | gae
            "kl_coef": 0.05,  # KL(pi_old || ref) per token subtracted from the reward (PPO, RLOO)
            "gamma": 1.0,
            "lam": 0.95,
            "whiten_advantages": True,
            "value_trunk_grad": False,  # value loss reaches the policy trunk (False: head on detached features)
            "label": "reward",  # preference learners: label pairs by reward | implicit (beta*log pi/ref)
            "implicit_beta": 0.1,
            # preference learners: alignment.learners.pairs strategy inside each group, fixed pair slots
            # per group (a slot without a pair, e.g. an all-tie group, gets weight 0), minimum reward gap
            "pairing": "best_vs_worst",
            "pairs_per_group": 1,
            "pair_margin": 0.0,
            # preference learners: this fraction of each step's prompts brings a dataset pair (the task's
            # gold-labelled pairs) instead of samples; labels kept ("dataset") or SAIL-DP's relabelling
            # by the policy's implicit reward ("implicit")
            "offline_fraction": 0.0,
            "offline_label": "dataset",
            # labels from the implicit reward (label="implicit", offline_label="implicit"): drawn
            # as P(first > second) = sigmoid(beta * margin), as SAIL's self-labelling gradient
            # assumes and the authors' code does ("sampled"), or the sign of the margin ("argmax")
            "implicit_labels": "sampled",
            # Self-Rewarding PPO: log pi_sft - log pi_base summed over the response ("sum", the paper)
            # or divided by its length ("token_mean")
            "log_ratio_reward": "sum",
            # Self-Rewarding PPO when reward.base_path is empty: pi_base = a random init of the
            # policy's architecture (seed + 1). For tests and tiny runs only (the `tiny` arg sets
            # it); otherwise a run must name its pi_base, and validation says so.
            "random_base": tiny,
        }
    )
    c.reward = rewards.default_reward_config()  # kind: task | verifier | reward_model | log_ratio
    c.reward.task = c.task
    c.global_batch_size = (
        c.online.num_prompts * c.online.group_size
    )  # informative: samples per step
    c.model.logprob_chunk_size = 32 if tiny else 512
    if tiny:
        c.model.preset = "tiny"
    return c
