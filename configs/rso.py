"""RSO (Liu et al., 2023): SFT samples -> reward -> statistical rejection sampling -> pairs ->
hinge / DPO against the SFT policy. See `alignment/learners/rso.py`.

    python -m experiments.train --config configs/rso.py:tiny --workdir /tmp/rso
    python -m experiments.train --config configs/rso.py:tiny,sampler=sft --workdir /tmp/dpo_sft
    python -m experiments.train --config configs/rso.py:task=sentiment,loss=dpo --workdir DIR \
        --config.model.init_from=/path/to/sft_hf --config.tokenizer=/path/to/sft_hf

Arg string: `tiny` (tiny model on the sentiment task, an SFT stage of its own, a few minutes
on CPU at most), `task=<embedded task>`, `loss=hinge|dpo|sigmoid_norm` (the paper's hinge-norm
/ sigmoid-norm = `dpo`; this library's `sigmoid_norm` is length-normalised DPO), `sampler=rso|sft`
(`sft`: the same pipeline on plain SFT samples, the "DPO on SFT samples" baseline),
`pairing=random|tournament`, `beta=<float>` (the sampling temperature of pi_r; the loss's own
beta is the paper's gamma, `config.loss_kwargs.beta`).
"""

from __future__ import annotations

import ml_collections

from alignment.config_files import sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    from alignment import rewards
    sft = sibling(__file__, "sft")
    args = sft.parse_arg(arg, {"tiny": False, "loss": "hinge", "task": "sentiment", "sampler": "rso",
                               "pairing": "random", "beta": 0.5})
    tiny = bool(args["tiny"])
    c = sft.base_config("preference", args)
    c.kind = "rso"
    c.task = str(args["task"])
    c.export_hf = True  # WORKDIR/hf: the policy experiments.evaluate scores against the SFT policy
    c.loss_kwargs.beta = 0.05  # the paper's gamma (hinge-norm and sigmoid-norm)
    c.reference.mode = "precomputed"  # pi_sft log-probs once per pair, not a second forward per step
    c.rso = ml_collections.ConfigDict({
        "sampler": str(args["sampler"]),  # rso | sft
        "num_prompts": 16 if tiny else 1024,  # train prompts of `task`
        "num_eval_prompts": 4 if tiny else 64,  # validation prompts -> held-out pairs (0: no eval)
        "num_samples": 8 if tiny else 64,  # N candidates per prompt from pi_sft
        "num_accepted": 4 if tiny else 8,  # M accepted by rejection sampling (M plain samples for sampler=sft)
        "beta": float(args["beta"]),  # pi_r ∝ pi_sft exp(r / beta)
        "temperature": 0.7,
        "top_k": 40,  # 0 = off
        "max_new_tokens": 48,
        "pairing": str(args["pairing"]),  # random (M/2 disjoint pairs) | tournament (M-1 pairs)
        "margin": 0.0,  # drop pairs whose reward gap is below this
        "loss": str(args["loss"]),  # = config.loss
        "batch_size": 64,  # generation batch
        # no SFT policy given (model.init_from = ""): SFT the preset on the task's demonstrations
        "sft_steps": 60 if tiny else 0,
        "sft_examples": 2048,
        "sft_learning_rate": 3e-3 if tiny else 1e-5,
    })
    c.loss = c.rso.get_ref("loss")
    c.reward = rewards.default_reward_config()
    c.reward.kind = "task"
    c.reward.task = c.get_ref("task")  # the proxy reward; the gold reward (reward_mean, eval) is always `task`'s
    c.data.max_prompt_len = 64
    c.data.max_len = 128
    if tiny:
        c.num_train_steps = 16
        c.checkpoint_every_steps = 8
        c.eval_every_steps = 8
        c.global_batch_size = 8
        c.optim.learning_rate = 1e-3
        c.optim.warmup_steps = 2
    else:
        c.optim.learning_rate = 1e-6
        c.optim.warmup_steps = 50
    c.lock()
    return c
