"""SAIL (Ding et al., 2024): online DPO on pairs sampled from the current policy, with the extra
score-function gradient term (loss `sail`, docs/methods.md section 4).

    python -m experiments.train --config configs/sail.py:tiny --workdir /tmp/sail
    python -m experiments.train --config configs/sail.py:tiny,variant=pp --workdir /tmp/sail_pp

Arg string: `tiny`, `task=<name>`, `variant=`
  pr   pairs labelled by `config.reward` (a reward model or the task's scorer); score_coef 0.3
  pp   pairs labelled by the policy's own implicit reward, self-labelling term rho on; score_coef 0.2
  mix  the authors' mixing with offline pairs: 40% of each step's prompts bring a dataset pair
       (the task's gold-labelled pairs) relabelled by the policy's implicit reward (SAIL-DP,
       `online.offline_label="implicit"`), the other 60% are sampled and labelled by the reward
       (PR); score_coef 0.2, rho 0.2
Defaults follow the authors' code (beta 0.1, coefficients 0.3 / 0.2, DP share 0.4, extra term
normalised by the detached log-probs, implicit-reward labels drawn as P(first > second) =
sigmoid(beta * margin): `online.implicit_labels="sampled"`). The extra term keeps the sign of
the exact gradient (`loss_kwargs.score_term_sign="exact"`); the authors' code runs the opposite
sign (`"authors"`), see docs/methods.md section 4. Differences:
the authors' PP share (0.3) is folded into PR here, and one score_coef applies to every pair (theirs:
0.2 / 0.2 / 0.3 per source). Pure SAIL-PP / SAIL-DP from pi = ref get no signal at first: every
implicit reward is 0, so all their pairs tie (counted as `groups_without_pair` / `offline_pair_ties`,
weight 0); it is the reward-labelled share that moves the policy off the reference.
"""

from __future__ import annotations

import ml_collections

from alignment.engine.config import parse_arg
from alignment.learners.online_config import online_config

VARIANTS = ("pr", "pp", "mix")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, {"tiny": False, "task": "sorting", "variant": "pr"})
    variant = str(args["variant"])
    if variant not in VARIANTS:
        raise ValueError(f"configs/sail.py: variant={variant!r} is not one of {VARIANTS}")
    c = online_config("sail", args, "sail")
    c.online.label = "implicit" if variant == "pp" else "reward"
    if variant == "mix":
        c.online.offline_fraction = 0.4
        c.online.offline_label = "implicit"
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
    c.loss_kwargs.beta = 0.1
    c.loss_kwargs.score_coef = 0.3 if variant == "pr" else 0.2
    c.loss_kwargs.self_label_coef = 0.0 if variant == "pr" else 0.2
    # the authors' code divides each log pi(y) of the extra term by its detached magnitude; the raw
    # sum (False) has no baseline and pushes every sampled response down: with all pairs of 8
    # samples on sorting (lr 3e-5, 60 steps) it collapsed the policy (gold 0.0, KL 12)
    c.loss_kwargs.normalize_score_term = True
    if not args["tiny"]:
        c.optim.learning_rate = 5e-7
    c.lock()
    return c
