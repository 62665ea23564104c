"""A tiny base LM (BPE tokenizer + ~1M-parameter decoder) pretrained on an embedded task's corpus.

    python -m experiments.pretrain --config configs/pretrain.py:sentiment
    python -m experiments.pretrain --config configs/pretrain.py:sentiment,tiny --config.cache_dir=/tmp/b

Arg string: the task name (any of `alignment.tasks.available()`, default `sentiment`), `tiny`
(a very small model and a few steps, for tests). `cache_dir` empty means
`~/.cache/alignment/bases/<task>-<hash of this config>`; see `alignment.pretrain`.
"""

from __future__ import annotations

import ml_collections

from alignment import tasks
from alignment.engine.config import base_config, parse_arg


def parse_task_arg(arg: str | None, allowed: dict[str, object]) -> tuple[str, dict[str, object]]:
    """'sentiment,tiny' -> ('sentiment', {'tiny': True, ...}): the one bare word that is not a
    flag of `allowed` names the task."""
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    names = [p for p in parts if "=" not in p and p not in allowed]
    if len(names) > 1:
        raise ValueError(
            f"config argument {arg!r} names several tasks {names}; give one of {tasks.available()}"
        )
    task = names[0] if names else "sentiment"
    if task not in tasks.available():
        raise ValueError(
            f"unknown task {task!r} in config argument {arg!r}; valid tasks: "
            f"{', '.join(tasks.available())}"
        )
    return task, parse_arg(",".join(p for p in parts if p not in names), allowed)


def pretrain_config(task: str, tiny: bool) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = task
    c.task_kwargs = ""  # JSON object of the task's knobs, e.g. '{"num_ops": [2, 3]}'
    c.seed = 0
    c.cache_dir = ""  # "" = ~/.cache/alignment/bases/<task>-<config hash>
    c.corpus = ml_collections.ConfigDict(
        {
            # train-split prompts (sentiment's train split has ~5.1k)
            "num_prompts": 256 if tiny else 4096,
            "demos_per_prompt": 1 if tiny else 3,
            "eval_docs": 64 if tiny else 256,
        }
    )
    c.tokenizer = ml_collections.ConfigDict(
        {"vocab_size": 300 if tiny else 1024, "min_frequency": 2}
    )
    c.model = ml_collections.ConfigDict(
        {
            "d_model": 32 if tiny else 128,
            "n_layers": 2 if tiny else 4,
            "n_heads": 4,
            "n_kv_heads": 2,
            "head_dim": 8 if tiny else 32,
            "d_ff": 64 if tiny else 384,
            "max_seq_len": 64,
            "tie_embeddings": False,
            "vocab_multiple": 64,  # the embedding has the tokenizer's ids rounded up to a multiple of this
        }
    )
    t = base_config("sft", {"tiny": False, "loss": "sft"})
    t.num_train_steps = 6 if tiny else 400
    t.global_batch_size = 16 if tiny else 64
    t.checkpoint_every_steps = t.num_train_steps
    t.keep_checkpoints = 1
    t.checkpoint_async = False
    t.log_every_steps = 1 if tiny else 50
    t.eval_every_steps = 0 if tiny else 200
    t.eval_batches = 2
    t.task = task
    t.tensorboard = False
    t.progress_bar = not tiny
    t.model.logprob_chunk_size = 64
    t.optim.learning_rate = 3e-3
    t.optim.warmup_steps = 2 if tiny else 40
    t.optim.weight_decay = 0.0
    t.data.max_prompt_len = 1  # documents have an empty prompt: only BOS
    t.data.max_len = 32  # the longest sentiment document is 26 BPE tokens + BOS + EOS
    t.data.truncation = "truncate_response"
    c.train = t
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    task, args = parse_task_arg(arg, {"tiny": False})
    config = pretrain_config(task, bool(args["tiny"]))
    config.lock()
    return config
