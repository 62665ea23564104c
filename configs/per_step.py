"""Per-step negatives (Setlur et al., 2024): SFT -> samples -> RFT, or Monte-Carlo step values
-> first-pit pairs -> DPO with pi_sft as reference, or the naive full-response pairs -> DPO.
See `alignment/learners/per_step.py`.

    python -m experiments.train --config configs/per_step.py:tiny --workdir /tmp/per_step
    python -m experiments.train --config configs/per_step.py:tiny,method=rft --workdir /tmp/rft
    python -m experiments.train --config configs/per_step.py:method=naive --workdir DIR \
        --config.model.init_from=/path/to/sft_hf --config.tokenizer=/path/to/sft_hf

Arg string: `tiny` (tiny model on an easy arithmetic task with an SFT stage of its own, a couple
of minutes on CPU), `method=per_step|rft|naive`, `task=<embedded task with a verifier and
step tools>` (default `arithmetic`; its knobs in `config.per_step.task_kwargs`).
"""

from __future__ import annotations

import ml_collections

from alignment.config_files import sibling

# Operands 1..9, two or three + / - operations: hard enough that a tiny SFT policy makes
# mistakes, easy enough that it also solves some problems (per-step pairs need both).
EASY_ARITHMETIC = {"num_ops": (2, 3), "operand_range": (1, 9), "operators": ("+", "-")}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    sft = sibling(__file__, "sft")
    args = sft.parse_arg(arg, {"tiny": False, "method": "per_step", "task": "arithmetic"})
    tiny = bool(args["tiny"])
    c = sft.base_config("preference", dict(args, loss="dpo"))
    c.kind = "per_step"
    c.task = str(args["task"])
    c.export_hf = True  # WORKDIR/hf: the final policy, scored against pi_sft by experiments.evaluate
    c.loss_kwargs.beta = 0.1
    c.reference.mode = "precomputed"  # pi_sft log-probs once per pair
    c.per_step = ml_collections.ConfigDict({
        "method": str(args["method"]),  # per_step | rft | naive
        # the task's knobs (alignment.tasks.get_task(task, **task_kwargs))
        "task_kwargs": ml_collections.ConfigDict(EASY_ARITHMETIC if c.task == "arithmetic" and tiny else {}),
        "num_problems": 32 if tiny else 1024,  # train problems: SFT demonstrations and pi_sft samples
        "samples_per_problem": 4,  # pi_sft samples per problem, verified
        "temperature": 1.0,  # samples and rollouts
        "max_new_tokens": 48 if tiny else 512,
        "rollouts": 5,  # Monte-Carlo rollouts of pi_sft from each step prefix
        "k": 5,  # Q = P(best of k rollouts is correct); the paper's K = 5
        "negatives_per_problem": 1,  # incorrect samples per problem turned into pairs (0 = all)
        # the chosen side: a verified pi_sft sample | the synthetic demonstration | a sample when
        # the problem has one, else the demonstration (all are correct solutions of the problem)
        "chosen": "sample_or_demonstration",
        "rft_learning_rate": 1e-3 if tiny else 1e-5,  # the rft method's SFT on its correct samples
        "batch_size": 256,  # generation batch
        "samples_dir": "",  # samples and step values, shared across methods ("" = WORKDIR/samples)
        # no SFT policy given (model.init_from = ""): SFT the preset on the demonstrations first
        "sft_steps": 150 if tiny else 0,
        "sft_learning_rate": 3e-3 if tiny else 1e-5,
    })
    c.data.format = "plain"
    c.data.max_prompt_len = 32
    c.data.max_len = 96 if tiny else 1024
    c.checkpoint_async = False
    if tiny:
        c.num_train_steps = 16
        c.checkpoint_every_steps = 16
        c.global_batch_size = 8
        c.optim.learning_rate = 1e-4
        c.optim.warmup_steps = 2
        c.tensorboard = False
    else:
        c.optim.learning_rate = 5e-7
        c.optim.warmup_steps = 50
    c.lock()
    return c
