"""The default experiment (`make run`): tiny base -> SFT -> gold-labelled pairs -> DPO -> evaluation.

    python -m experiments.default --workdir runs/default [--seed N] [--quick]
    python -m experiments.default --workdir DIR --config configs/default.py:quick --config.dpo.loss_kwargs.beta=0.2

Arg string: `quick` (the same base, far fewer prompts and steps: an end-to-end smoke run for
tests), `task=<name>` (default `sentiment`, the DPO paper's controlled-sentiment task; its
gold reward is VADER). `pretrain` is `configs/pretrain.py:<task>`, whose base is shipped with
the package for `sentiment`; `sft` and `dpo` are engine configs (`configs/sft.py`,
`configs/dpo.py`) whose data paths, tokenizer and init_from the experiment fills in.
"""

from __future__ import annotations

import ml_collections

from alignment.engine.config import base_config, parse_arg, short_stage
from configs import dpo as dpo_cfg
from configs import pretrain as pre_cfg


def _stage(
    config,
    *,
    steps: int,
    batch: int,
    lr: float,
    warmup: int,
    task: str,
    max_prompt_len: int,
    max_len: int,
):
    config.task = task
    config.model.logprob_chunk_size = 64
    config.data.source = "jsonl"
    return short_stage(
        config,
        steps=steps,
        batch=batch,
        lr=lr,
        warmup=warmup,
        max_prompt_len=max_prompt_len,
        max_len=max_len,
    )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, {"quick": False, "task": "sentiment"})
    quick, task = bool(args["quick"]), str(args["task"])
    c = ml_collections.ConfigDict()
    c.task = task
    c.seed = (
        0  # SFT, pair sampling and DPO; the base and the evaluation prompts have their own seeds
    )
    c.pretrain = pre_cfg.pretrain_config(pre_cfg.parse_task_arg(task, {})[0], tiny=False)

    # SFT on the task's demonstrations (train split)
    c.sft_data = ml_collections.ConfigDict({"num_prompts": 64 if quick else 2048})
    c.sft = _stage(
        base_config("sft", {"tiny": False, "loss": "sft"}),
        steps=3 if quick else 60,
        batch=16 if quick else 64,
        lr=1e-3,
        warmup=1 if quick else 6,
        task=task,
        max_prompt_len=24,
        max_len=48,
    )

    # pairs: samples of the SFT policy on train prompts, ranked by the gold reward
    c.pairs = ml_collections.ConfigDict(
        {
            "num_prompts": 32 if quick else 1024,
            "samples_per_prompt": 4 if quick else 4,  # best vs worst of these make the pair
            "temperature": 1.0,
            "max_new_tokens": 24,
            "batch_size": 256,
            "min_margin": 0.05,  # pairs whose gold rewards differ less are dropped (no signal)
        }
    )

    # DPO from the SFT policy, the SFT policy as reference (log-probs precomputed once per pair)
    c.dpo = _stage(
        dpo_cfg.get_config("reference=precomputed").unlock(),
        steps=3 if quick else 100,
        batch=16 if quick else 32,
        lr=3e-4,
        warmup=1 if quick else 10,
        task=task,
        max_prompt_len=24,
        max_len=48,
    )
    c.dpo.loss_kwargs.beta = 0.1

    # evaluation on held-out prompts: SFT (before, its own reference) and DPO (after, vs SFT)
    c.eval = ml_collections.ConfigDict(
        {
            "split": "test",
            "num_prompts": 8 if quick else 128,
            "samples_per_prompt": 2 if quick else 4,
            "max_new_tokens": 24,
            "temperature": 1.0,
            "batch_size": 256,
            "seed": 0,
        }
    )
    c.lock()
    return c
