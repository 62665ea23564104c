"""Self-Rewarding PPO: reward = sum_t log pi_sft(y_t) - log pi_base(y_t), given at EOS, then PPO
with GAE from pi_sft and an optional KL penalty to pi_sft (docs/methods.md section 4).

    python -m experiments.train --config configs/sr_ppo.py:tiny --workdir /tmp/sr_ppo
    python -m experiments.train --config configs/sr_ppo.py --workdir DIR \
        --config.model.init_from=SFT_HF --config.reward.base_path=BASE_HF --config.tokenizer=SFT_HF

pi_sft is the starting policy (`model.init_from`), so its log-probs are the reference forward
the loop already runs; pi_base is `reward.base_path`, required: only the `tiny` arg sets
`online.random_base`, which makes an empty base_path a random init with seed + 1 (a random
base makes the summed reward favour long responses; use a real earlier checkpoint).
`online.log_ratio_reward`: "sum" (the paper) or "token_mean" (divided by the response length).
Arg string: `tiny`, `task=<name>` (prompts, and the gold reward reported as reward_mean).
"""

from __future__ import annotations

import ml_collections

from alignment.engine.config import parse_arg
from alignment.learners.online_config import online_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, {"tiny": False, "task": "sorting"})
    c = online_config("sr_ppo", args, "ppo")
    c.reward.kind = "log_ratio"
    c.online.kl_coef = 0.05  # KL to pi_sft (the reference) in the reward; 0 turns it off
    c.loss_kwargs.vf_coef = 0.1
    c.lock()
    return c
