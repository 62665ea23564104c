"""Per-step negatives (Setlur et al., 2024): SFT -> samples -> RFT, or Monte-Carlo step values
-> first-pit pairs -> DPO with pi_sft as reference, or the naive full-response pairs -> DPO.
Pipeline: `experiments/pipelines/per_step.py`; the pieces:
`alignment/learners/per_step.py`.

    python -m experiments.train --config configs/per_step.py:tiny --workdir /tmp/per_step
    python -m experiments.train --config configs/per_step.py:tiny,method=rft --workdir /tmp/rft
    python -m experiments.train --config configs/per_step.py:method=naive --workdir DIR \
        --config.init_from=/path/to/sft_hf --config.tokenizer=/path/to/sft_hf

Arg string: `tiny` (tiny model on an easy arithmetic task with an SFT stage of its own, a couple
of minutes on CPU), `method=per_step|rft|naive`, `task=<embedded task with a verifier and
step tools>` (default `arithmetic`; its knobs in `config.per_step.task_kwargs`).

Each stage is an engine config of its own: `sft` (WORKDIR/sft, run when `init_from` is empty:
`per_step.sft_steps` steps on the problems' demonstrations), and the final stage in WORKDIR:
`rft` (SFT on the verified-correct samples, method rft) or `preference` (DPO on the pairs,
methods per_step and naive; pi_sft is the reference). `seed`, `task` and `tokenizer` are shared;
`rft` follows `preference`'s steps, batch and schedule so that the methods train alike. The
pipeline fills in the data paths under WORKDIR and the SFT policy.
"""

from __future__ import annotations

import ml_collections

from alignment.engine.config import base_config, parse_arg

# Operands 1..9, two or three + / - operations: hard enough that a tiny SFT policy makes
# mistakes, easy enough that it also solves some problems (per-step pairs need both).
EASY_ARITHMETIC = {"num_ops": (2, 3), "operand_range": (1, 9), "operators": ("+", "-")}


def _stage(kind: str, loss: str, c, tiny: bool) -> ml_collections.ConfigDict:
    """An engine config for one stage: the settings every per-step stage shares."""
    s = base_config(kind, {"tiny": tiny, "loss": loss})
    s.seed = c.get_ref("seed")
    s.task = c.get_ref("task")
    s.tokenizer = c.get_ref("tokenizer")
    s.export_hf = True  # WORKDIR/hf: the next stage (or experiments.evaluate) reads it
    s.checkpoint_async = False
    s.eval_every_steps = (
        0  # the rows come from the train problems; held-out accuracy is the real test
    )
    s.data.seed = c.get_ref("seed")
    s.data.source, s.data.format = "jsonl", "plain"
    s.data.files.test = ""
    s.data.max_prompt_len = 32
    s.data.max_len = 96 if tiny else 1024
    if tiny:
        s.global_batch_size = 8
        s.tensorboard = False
    return s


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, {"tiny": False, "method": "per_step", "task": "arithmetic"})
    tiny = bool(args["tiny"])
    c = ml_collections.ConfigDict()
    c.kind = "per_step"
    c.seed = 0
    c.task = str(args["task"])
    c.tokenizer = "tiny" if tiny else ""
    c.init_from = ""  # the SFT policy's HF folder; "" = the `sft` stage makes one
    c.per_step = ml_collections.ConfigDict(
        {
            "method": str(args["method"]),  # per_step | rft | naive
            # the task's knobs (alignment.tasks.get_task(task, **task_kwargs))
            "task_kwargs": ml_collections.ConfigDict(
                EASY_ARITHMETIC if c.task == "arithmetic" and tiny else {}
            ),
            # train problems: SFT demonstrations and pi_sft samples
            "num_problems": 32 if tiny else 1024,
            "samples_per_problem": 4,  # pi_sft samples per problem, verified
            "temperature": 1.0,  # samples and rollouts
            "max_new_tokens": 48 if tiny else 512,
            "rollouts": 5,  # Monte-Carlo rollouts of pi_sft from each step prefix
            "k": 5,  # Q = P(best of k rollouts is correct); the paper's K = 5
            "negatives_per_problem": 1,  # incorrect samples per problem turned into pairs (0 = all)
            # the chosen side: a verified pi_sft sample | the synthetic demonstration | a sample when
            # the problem has one, else the demonstration (all are correct solutions of the problem)
            "chosen": "sample_or_demonstration",
            # the rft method's SFT on its correct samples
            "rft_learning_rate": 1e-3 if tiny else 1e-5,
            "batch_size": 256,  # generation batch
            "samples_dir": "",  # samples and step values, shared across methods ("" = WORKDIR/samples)
            # no SFT policy given (init_from = ""): SFT the preset on the demonstrations first
            "sft_steps": 150 if tiny else 0,
            "sft_learning_rate": 3e-3 if tiny else 1e-5,
        }
    )
    steps, every, warmup = (16, 16, 2) if tiny else (1000, 500, 50)

    # methods per_step and naive: DPO on the pairs in WORKDIR, pi_sft as reference
    p = _stage("preference", "dpo", c, tiny)
    p.loss_kwargs.beta = 0.1
    p.reference.mode = "precomputed"  # pi_sft log-probs once per pair
    p.num_train_steps = steps
    p.checkpoint_every_steps = min(every, steps)
    p.optim.learning_rate = 1e-4 if tiny else 5e-7
    p.optim.warmup_steps = min(warmup, steps - 1)
    c.preference = p

    # method rft: SFT on the verified-correct samples in WORKDIR, trained like `preference`
    r = _stage("sft", "sft", c, tiny)
    for key in (
        "num_train_steps",
        "checkpoint_every_steps",
        "global_batch_size",
        "log_every_steps",
        "progress_bar",
        "tensorboard",
    ):
        r[key] = p.get_ref(key)
    r.optim.warmup_steps = p.optim.get_ref("warmup_steps")
    r.optim.learning_rate = c.per_step.get_ref("rft_learning_rate")
    c.rft = r

    # the SFT stage in WORKDIR/sft (when init_from is empty): the problems' demonstrations
    s = _stage("sft", "sft", c, tiny)
    sft_steps = c.per_step.sft_steps
    s.num_train_steps = c.per_step.get_ref("sft_steps")
    s.checkpoint_every_steps = min(every, sft_steps) or sft_steps
    s.optim.learning_rate = c.per_step.get_ref("sft_learning_rate")
    s.optim.warmup_steps = min(warmup, max(sft_steps - 1, 0))
    c.sft = s
    c.lock()
    return c
