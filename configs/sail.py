"""SAIL (Ding et al., 2024): online DPO on pairs sampled from the current policy, with the extra
score-function gradient term (loss `sail`, methods.md section 4).

    python -m experiments.train --config configs/sail.py:tiny --workdir /tmp/sail
    python -m experiments.train --config configs/sail.py:tiny,variant=pp --workdir /tmp/sail_pp

Arg string: `tiny`, `task=<name>`, `variant=`
  pr  pairs labelled by `config.reward` (a reward model or the task's scorer); score_coef 0.3
  pp  pairs labelled by the policy's own implicit reward, self-labelling term rho on; score_coef 0.2
Defaults follow the authors' code (beta 0.1, coefficients 0.3 / 0.2). SAIL-DP (dataset responses
relabelled by the policy, mixed with online pairs at a ratio) is not implemented yet.
"""

from __future__ import annotations

import ml_collections

from alignment.config_files import sibling

VARIANTS = ("pr", "pp")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    ppo = sibling(__file__, "ppo")
    args = sibling(__file__, "sft").parse_arg(arg, {"tiny": False, "task": "sorting", "variant": "pr"})
    variant = str(args["variant"])
    if variant not in VARIANTS:
        raise ValueError(f"configs/sail.py: variant={variant!r} is not one of {VARIANTS}")
    c = ppo.online_config("sail", args, "sail")
    c.online.label = "reward" if variant == "pr" else "implicit"
    c.online.num_prompts = 8 if args["tiny"] else 64
    c.online.group_size = 2 if args["tiny"] else 4
    c.online.advantage = "group"  # unused by preference learners
    c.online.kl_coef = 0.0
    c.online.num_minibatches = 1
    c.global_batch_size = c.online.num_prompts * c.online.group_size
    c.loss_kwargs.beta = 0.1
    c.loss_kwargs.score_coef = 0.3 if variant == "pr" else 0.2
    c.loss_kwargs.self_label_coef = 0.0 if variant == "pr" else 0.2
    if not args["tiny"]:
        c.optim.learning_rate = 5e-7
    c.lock()
    return c
