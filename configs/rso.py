"""RSO (Liu et al., 2023): SFT samples -> reward -> statistical rejection sampling -> pairs ->
hinge / DPO against the SFT policy. Pipeline: `experiments/pipelines/rso.py`; the sampler:
`alignment/learners/rso.py`.

    python -m experiments.train --config configs/rso.py:tiny --workdir /tmp/rso
    python -m experiments.train --config configs/rso.py:tiny,sampler=sft --workdir /tmp/dpo_sft
    python -m experiments.train --config configs/rso.py:task=sentiment,loss=dpo --workdir DIR \
        --config.init_from=/path/to/sft_hf --config.tokenizer=/path/to/sft_hf

Arg string: `tiny` (tiny model on the sentiment task, an SFT stage of its own, a few minutes
on CPU at most), `task=<embedded task>`, `loss=hinge|dpo|sigmoid_norm` (the paper's hinge-norm
/ sigmoid-norm = `dpo`; this library's `sigmoid_norm` is length-normalised DPO), `sampler=rso|sft`
(`sft`: the same pipeline on plain SFT samples, the "DPO on SFT samples" baseline),
`pairing=random|tournament`, `beta=<float>` (the sampling temperature of pi_r; the loss's own
beta is the paper's gamma, `config.preference.loss_kwargs.beta`).

Each stage is an engine config of its own: `sft` (WORKDIR/sft, run when `init_from` is
empty: `rso.sft_steps` steps on `rso.sft_examples` demonstrations) and `preference` (WORKDIR,
on the pairs, starting from and referenced to the SFT policy). `seed`, `task` and `tokenizer`
are shared by both; the pipeline fills in the data paths under WORKDIR and the SFT policy.
"""

from __future__ import annotations

import ml_collections

from alignment import rewards
from alignment.engine.config import base_config, parse_arg


def _shared(stage, c) -> None:
    stage.seed = c.get_ref("seed")
    stage.data.seed = c.get_ref("seed")
    stage.tokenizer = c.get_ref("tokenizer")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(
        arg,
        {
            "tiny": False,
            "loss": "hinge",
            "task": "sentiment",
            "sampler": "rso",
            "pairing": "random",
            "beta": 0.5,
        },
    )
    tiny = bool(args["tiny"])
    c = ml_collections.ConfigDict()
    c.kind = "rso"
    c.seed = 0
    c.task = str(args["task"])
    c.tokenizer = "tiny" if tiny else ""
    c.init_from = ""  # the SFT policy's HF folder; "" = the `sft` stage makes one
    c.rso = ml_collections.ConfigDict(
        {
            "sampler": str(args["sampler"]),  # rso | sft
            "num_prompts": 16 if tiny else 1024,  # train prompts of `task`
            # validation prompts -> held-out pairs (0: no eval)
            "num_eval_prompts": 4 if tiny else 64,
            "num_samples": 8 if tiny else 64,  # N candidates per prompt from pi_sft
            # M accepted by rejection sampling (M plain samples for sampler=sft)
            "num_accepted": 4 if tiny else 8,
            "beta": float(args["beta"]),  # pi_r ∝ pi_sft exp(r / beta)
            "temperature": 0.7,
            "top_k": 40,  # 0 = off
            "max_new_tokens": 48,
            "pairing": str(args["pairing"]),  # random (M/2 disjoint pairs) | tournament (M-1 pairs)
            "margin": 0.0,  # drop pairs whose reward gap is below this
            "batch_size": 64,  # generation batch
            # no SFT policy given (init_from = ""): SFT the preset on the task's
            # demonstrations first (the `sft` stage)
            "sft_steps": 60 if tiny else 0,
            "sft_examples": 2048,
            "sft_learning_rate": 3e-3 if tiny else 1e-5,
        }
    )
    c.reward = rewards.default_reward_config()
    c.reward.kind = "task"
    c.reward.task = c.get_ref(
        "task"
    )  # the proxy reward; the gold reward (reward_mean, eval) is always `task`'s

    # the preference stage in WORKDIR: the pairs RSO wrote, pi_sft as reference
    p = base_config("preference", args)
    p.task = c.get_ref("task")
    p.export_hf = True  # WORKDIR/hf: the policy experiments.evaluate scores against the SFT policy
    p.loss_kwargs.beta = 0.05  # the paper's gamma (hinge-norm and sigmoid-norm)
    p.reference.mode = (
        "precomputed"  # pi_sft log-probs once per pair, not a second forward per step
    )
    p.data.source, p.data.builder, p.data.format = "tfds", "alignment_generic", "plain"
    p.data.max_prompt_len = 64
    p.data.max_len = 128
    if tiny:
        p.num_train_steps = 16
        p.checkpoint_every_steps = 8
        p.eval_every_steps = 8
        p.global_batch_size = 8
        p.optim.learning_rate = 1e-3
        p.optim.warmup_steps = 2
    else:
        p.optim.learning_rate = 1e-6
        p.optim.warmup_steps = 50
    _shared(p, c)
    c.preference = p

    # the SFT stage in WORKDIR/sft (when init_from is empty)
    s = base_config("sft", {"tiny": tiny, "loss": "sft"})
    s.task = c.get_ref("task")
    s.num_train_steps = c.rso.get_ref("sft_steps")
    s.checkpoint_every_steps = c.rso.get_ref(
        "sft_steps"
    )  # a short stage: its export is what counts
    s.eval_every_steps = 0
    s.export_hf = True
    s.global_batch_size = p.global_batch_size
    s.optim.learning_rate = c.rso.get_ref("sft_learning_rate")
    s.optim.warmup_steps = min(p.optim.warmup_steps, max(c.rso.sft_steps - 1, 0))
    s.data.source, s.data.builder, s.data.format = "tfds", "alignment_generic", "plain"
    s.data.max_prompt_len = p.data.max_prompt_len
    s.data.max_len = p.data.max_len
    _shared(s, c)
    c.sft = s
    c.lock()
    return c
