"""Online DPO: sample `group_size` responses per prompt from the current policy, pair them
(`online.pairing`, `alignment.learners.pairs`; default all pairs with different labels, up to
`group_size` per prompt; ties never paired), train with any preference loss against the frozen
starting policy.

    python -m experiments.train --config configs/online_dpo.py:tiny --workdir /tmp/odpo
    python -m experiments.train --config configs/online_dpo.py:tiny,loss=ipo,label=implicit --workdir DIR

Arg string: `tiny`, `task=<name>`, `loss=<preference loss>`, `label=reward|implicit`: pairs
ranked by `config.reward` (the task's gold reward, a verifier, a reward model) or by the
policy's implicit reward `implicit_beta * (log pi - log ref)` of each sample.
"""

from __future__ import annotations

import ml_collections

from alignment.engine.config import parse_arg
from alignment.learners.online_config import online_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, {"tiny": False, "task": "sorting", "loss": "dpo", "label": "reward"})
    c = online_config("online_dpo", args, str(args["loss"]))
    c.online.label = str(args["label"])
    c.online.num_prompts = 8 if args["tiny"] else 64
    c.online.group_size = 4 if args["tiny"] else 8
    # every pair of a group with different rewards, up to group_size of them: several times the
    # pairs best-vs-worst gets from the same samples (sorting's sparse gold ties often)
    c.online.pairing = "all_pairs"
    c.online.pairs_per_group = c.online.group_size
    c.online.advantage = "group"  # unused by preference learners
    c.online.kl_coef = 0.0
    c.online.num_minibatches = 1
    c.global_batch_size = c.online.num_prompts * c.online.group_size
    if not args["tiny"]:
        c.optim.learning_rate = 5e-7
    c.lock()
    return c
