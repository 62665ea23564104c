"""Supervised fine-tuning on demonstrations (token-mean NLL over response tokens).

    python -m experiments.train --config configs/sft.py:tiny --workdir /tmp/sft
    python -m experiments.train --config configs/sft.py --workdir DIR \
        --config.tokenizer=/path/to/hf_model --config.model.init_from=/path/to/hf_model \
        --config.data.source=tfds --config.data.builder=alignment_gsm8k ...

Arg string (comma-separated, big_vision style): `tiny` (2-layer model, synthetic sorting task,
runs on CPU in well under a minute), `loss=<name>` (any supervised loss).
This file also holds `base_config(kind, args)`, the defaults shared by every training config.
"""

from __future__ import annotations


import ml_collections

def parse_arg(arg: str | None, allowed: dict[str, object]) -> dict[str, object]:
    """'tiny,loss=ipo' -> {'tiny': True, 'loss': 'ipo'} over `allowed` (name -> default)."""
    out = dict(allowed)
    for part in filter(None, (arg or "").split(",")):
        key, sep, value = part.partition("=")
        key = key.strip()
        if key not in allowed:
            raise ValueError(f"unknown config argument {key!r} in {arg!r}; allowed: {sorted(allowed)}")
        if isinstance(allowed[key], bool):
            out[key] = (value.strip().lower() in ("1", "true", "yes")) if sep else True
        else:
            if not sep:
                raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
            out[key] = type(allowed[key])(value.strip())
    return out


def loss_defaults(loss: str) -> ml_collections.ConfigDict:
    """The configurable knobs of `alignment.losses.get(loss)` with its own defaults (typed);
    knobs whose default is None are left out (set them in a config if a loss needs them)."""
    from alignment import losses
    return ml_collections.ConfigDict(losses.defaults(loss))


def base_config(kind: str, args: dict[str, object]) -> ml_collections.ConfigDict:
    from alignment import data
    tiny = bool(args["tiny"])
    c = ml_collections.ConfigDict()
    c.kind = kind
    c.seed = 0
    c.num_train_steps = 20 if tiny else 1000
    c.checkpoint_every_steps = 10 if tiny else 500
    c.keep_checkpoints = 2
    c.checkpoint_async = True
    c.log_every_steps = 1 if tiny else 10
    c.global_batch_size = 8 if tiny else 64
    c.grad_accum_steps = 1
    c.export_hf = False  # WORKDIR/hf at the end (+ WORKDIR/reference_hf for a random init)
    # held-out loss every N steps and at the last step (0 = off) on `eval_batches` fixed batches
    # of data split "eval" (data.splits maps it to the source's split), each of
    # global_batch_size / grad_accum_steps rows
    c.eval_every_steps = 10 if tiny else 0
    c.eval_batches = 2 if tiny else 8
    c.task = ""  # an embedded task (alignment.tasks) recorded in run.json for experiments.evaluate
    c.tensorboard = True
    c.progress_bar = True
    c.tokenizer = "tiny" if tiny else ""  # "tiny" or a folder with tokenizer.json (+ tokenizer_config.json)

    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    c.distributed = ml_collections.ConfigDict({
        "num_processes": 1, "process_id": 0, "coordinator_address": "",
        "cpu_collectives": "gloo",  # CPU-only multi-process runs need a collectives backend
    })
    c.model = ml_collections.ConfigDict({
        "preset": "tiny" if tiny else "qwen3-0.6b",
        "init_from": "",  # a Hugging Face folder; "" = random init from `preset`
        "dtype": "float32",  # compute dtype; "bfloat16" with param_dtype float32 = f32 master weights
        "param_dtype": "float32",
        "scan_layers": False,
        "remat_policy": "none",
        "logprob_chunk_size": 32 if tiny else 512,
        # recompute each chunk's [B, chunk, V] logits in the backward pass (memory O(B*chunk*V));
        # False keeps them all (O(B*T*V) memory, 2*B*T*D*V fewer FLOPs)
        "logprob_remat": True,
    })
    c.optim = ml_collections.ConfigDict({
        "name": "adamw",
        "learning_rate": 1e-3 if tiny else 1e-5,
        "schedule": "cosine",  # constant | linear | cosine
        "warmup_steps": 2 if tiny else 50,
        "end_lr_factor": 0.1,
        "b1": 0.9, "b2": 0.95, "eps": 1e-8,
        "weight_decay": 0.0 if tiny else 0.01,
        "decay_min_ndim": 2,
        "no_decay_regex": r"(norm|bias|embed|wpe|wte|scale)",
        "max_grad_norm": 1.0,
        "freeze_regex": "",  # parameters whose '/'-path matches stay fixed
    })
    c.loss = str(args["loss"])
    c.loss_kwargs = loss_defaults(c.loss)
    c.reference = ml_collections.ConfigDict({"mode": "in_step"})  # in_step | precomputed
    c.data = data.default_data_config(kind)
    if tiny:
        c.data.max_prompt_len = 20  # the longest synthetic prompt is 19 tokens: none is cut
        c.data.max_len = 32
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, {"tiny": False, "loss": "sft"})
    config = base_config("sft", args)
    config.lock()
    return config
