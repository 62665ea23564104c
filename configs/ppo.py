"""PPO with a value head and GAE on an embedded task (KL to the reference folded into the reward).

    python -m experiments.train --config configs/ppo.py:tiny --workdir /tmp/ppo
    python -m experiments.train --config configs/ppo.py:task=arithmetic --workdir DIR \
        --config.model.init_from=/path/to/sft/hf --config.tokenizer=/path/to/sft/hf

Arg string: `tiny` (tiny random model, a few steps, CPU), `task=<name>` (embedded task).
The defaults shared by the online configs are `alignment.learners.online_config.online_config`.
"""

from __future__ import annotations

import ml_collections

from alignment.engine.config import parse_arg
from alignment.learners.online_config import online_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, {"tiny": False, "task": "sorting"})
    config = online_config("ppo", args, "ppo")
    config.loss_kwargs.vf_coef = 0.1
    config.loss_kwargs.aggregation = "bnpo"
    config.lock()
    return config
