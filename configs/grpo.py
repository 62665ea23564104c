"""GRPO with group sampling on an embedded task; RLOO, Dr. GRPO, DAPO and GSPO as variants.

    python -m experiments.train --config configs/grpo.py:tiny --workdir /tmp/grpo
    python -m experiments.train --config configs/grpo.py:tiny,variant=rloo --workdir /tmp/rloo

Arg string: `tiny`, `task=<name>`, `variant=`
  grpo     group z-score advantages, clipped token surrogate, k3 KL in the loss (beta 0.04),
           sequence-mean of token-means (Shao et al., 2024)
  rloo     leave-one-out advantages, KL folded into the reward, sequence-level clipped ratio
           (Ahmadian et al., 2024)
  dr_grpo  mean-only group advantages, sum / (B * max_len) aggregation, no KL (Liu et al., 2025)
  dapo     clip-higher (eps_high 0.28), token-mean over the generation batch, no KL (Yu et al., 2025;
           dynamic sampling of groups with non-constant reward is not implemented)
  gspo     length-normalised sequence ratio, eps 3e-4 / 4e-4, no KL (Zheng et al., 2025)
"""

from __future__ import annotations

import ml_collections

from alignment.engine.config import parse_arg
from alignment.learners.online_config import online_config

VARIANTS = ("grpo", "rloo", "dr_grpo", "dapo", "gspo")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, {"tiny": False, "task": "sorting", "variant": "grpo"})
    variant = str(args["variant"])
    if variant not in VARIANTS:
        raise ValueError(f"configs/grpo.py: variant={variant!r} is not one of {VARIANTS}")
    c = online_config("grpo", args, "rloo" if variant == "rloo" else "grpo")
    c.online.kl_coef = 0.0
    c.online.advantage = "group"
    k = c.loss_kwargs
    if variant == "grpo":
        k.beta, k.kl_estimator = 0.04, "k3"
    elif variant == "rloo":
        c.online.advantage = "rloo"
        c.online.kl_coef = 0.05
    elif variant == "dr_grpo":
        c.online.advantage = "group_mean"
        k.aggregation = "dr_grpo"
    elif variant == "dapo":
        k.epsilon_high, k.aggregation = 0.28, "dapo"
    else:  # gspo
        k.importance_level, k.epsilon_low, k.epsilon_high = "sequence", 3e-4, 4e-4
    c.lock()
    return c
