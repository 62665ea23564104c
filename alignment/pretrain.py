"""Tiny base models for the embedded tasks: a BPE tokenizer and a small decoder LM trained on a
task's corpus, saved as a Hugging Face folder and cached.

    base_dir = pretrain.build_base(config)      # config: configs/pretrain.py:get_config("sentiment")

The corpus is the task's train split: every prompt once, followed by `corpus.demos_per_prompt`
demonstrations per prompt (prompt + response as one document), so the base has seen the
language of the task but was never tuned to follow a prompt. The tokenizer is byte-level BPE
(`tokenizers`, Sennrich et al. 2016) with <pad>/<bos>/<eos>; the LM is trained by the offline
learner (`alignment.learners.run`, kind "sft") on documents with an empty prompt, i.e.
next-token NLL on every token. Everything is a pure function of the config: same config, same bytes (on the same
device count).

Where the base lives (`resolve_base`): `config.cache_dir` when set, else
`~/.cache/alignment/bases/<task>-<hash of the config>`; a folder already there is reused after
checking its config.json against the requested shape, and a base shipped in
`alignment/assets/bases/<task>/` is used as is when it was made from the same config hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Any

import ml_collections
import tokenizers
from tokenizers import decoders, pre_tokenizers, processors, trainers
from tokenizers import models as tok_models

from alignment import checkpoint as ckpt_lib
from alignment import data as data_lib
from alignment import engine, learners, models, sharding, tasks
from alignment.models import hf as hf_lib
from alignment.tokenizer import Tokenizer

log = logging.getLogger(__name__)

ASSETS = pathlib.Path(__file__).resolve().parent / "assets" / "bases"
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
CONFIG_RECORD = "pretrain_config.json"  # written next to config.json: the config and its hash
# the keys of `config.train` that decide what the base computes; the rest (logging, checkpoint
# cadence, data-pipeline switches the corpus does not use, keys other parts of the library add
# later with neutral defaults) stay out of the hash, so a shipped base survives them
HASHED_TRAIN_KEYS = (
    "num_train_steps",
    "global_batch_size",
    "grad_accum_steps",
    "loss",
    "loss_kwargs",
    "optim.name",
    "optim.learning_rate",
    "optim.schedule",
    "optim.warmup_steps",
    "optim.end_lr_factor",
    "optim.b1",
    "optim.b2",
    "optim.eps",
    "optim.weight_decay",
    "optim.max_grad_norm",
    "model.dtype",
    "model.param_dtype",
    "data.max_len",
    "data.max_prompt_len",
    "data.truncation",
    "data.shuffle",
    "data.seed",
)
# ModelConfig fields that config.model sets, checked against a cached config.json
SHAPE_FIELDS = (
    "vocab_size",
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "head_dim",
    "d_ff",
    "max_seq_len",
)


# ----------------------------------------------------------------------------- identity


def hashed_fields(config) -> dict[str, Any]:
    """What identifies a base: everything but `cache_dir` and `train`, plus HASHED_TRAIN_KEYS."""
    d = {k: v for k, v in config.to_dict().items() if k not in ("cache_dir", "train")}
    for key in HASHED_TRAIN_KEYS:
        node = config.train
        for part in key.split("."):
            node = node[part]
        d[f"train.{key}"] = node.to_dict() if isinstance(node, ml_collections.ConfigDict) else node
    return d


def config_hash(config: ml_collections.ConfigDict) -> str:
    """12 hex digits of sha256 over the canonical JSON of `hashed_fields(config)`."""
    return hashlib.sha256(
        json.dumps(hashed_fields(config), sort_keys=True, default=str).encode()
    ).hexdigest()[:12]


def default_cache_root() -> pathlib.Path:
    return pathlib.Path(os.path.expanduser("~")) / ".cache" / "alignment" / "bases"


def cache_dir(config) -> pathlib.Path:
    """Where `config`'s base is (or will be) stored."""
    if config.cache_dir:
        return pathlib.Path(config.cache_dir).expanduser().resolve()
    return default_cache_root() / f"{config.task}-{config_hash(config)}"


def model_config(config, vocab_size: int):
    """The `ModelConfig` of `config.model` for a tokenizer of `vocab_size` ids (rounded up to a
    multiple of `model.vocab_multiple`, so the vocab axis splits over tensor-parallel meshes)."""
    m = config.model
    vocab = -(-vocab_size // m.vocab_multiple) * m.vocab_multiple
    return models.get_preset(
        "tiny",
        vocab_size=vocab,
        d_model=m.d_model,
        n_layers=m.n_layers,
        n_heads=m.n_heads,
        n_kv_heads=m.n_kv_heads,
        head_dim=m.head_dim,
        d_ff=m.d_ff,
        max_seq_len=m.max_seq_len,
        tie_embeddings=m.tie_embeddings,
    )


def check_base(path, config, *, vocab_size: int | None = None) -> None:
    """Raises ValueError naming `path` and the field when the HF folder's config.json disagrees
    with the shape `config.model` asks for (and with `vocab_size` when given)."""
    path = pathlib.Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path}: not a base model folder (no config.json)")
    with open(cfg_file) as f:
        hf = json.load(f)
    have = hf_lib.config_from_hf(hf, where=str(cfg_file))
    m = config.model
    want = {
        "d_model": m.d_model,
        "n_layers": m.n_layers,
        "n_heads": m.n_heads,
        "n_kv_heads": m.n_kv_heads,
        "head_dim": m.head_dim,
        "d_ff": m.d_ff,
        "max_seq_len": m.max_seq_len,
        "tie_embeddings": m.tie_embeddings,
    }
    if vocab_size is not None:
        want["vocab_size"] = -(-vocab_size // m.vocab_multiple) * m.vocab_multiple
    for field, value in want.items():
        if getattr(have, field) != value:
            raise ValueError(
                f"{path} holds a model with {field}={getattr(have, field)!r}, but the config asks for "
                f"{field}={value!r}; delete the folder or point cache_dir elsewhere"
            )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: base model folder has no {name}")


def shipped_base(config) -> pathlib.Path | None:
    """The base shipped with the package for `config.task`, when it was made from this config."""
    path = ASSETS / config.task
    record = path / CONFIG_RECORD
    if not record.is_file():
        return None
    with open(record) as f:
        shipped = json.load(f)
    if shipped.get("hash") != config_hash(config):
        return None
    return path


# ----------------------------------------------------------------------------- corpus & tokenizer


def get_task(config):
    if config.task not in tasks.available():
        raise ValueError(
            f"pretrain: unknown task {config.task!r}; valid tasks: {', '.join(tasks.available())}"
        )
    return tasks.get_task(config.task, **json.loads(config.task_kwargs or "{}"))


def corpus(config) -> list[str]:
    """Documents of the task's train split: each prompt, then `demos_per_prompt` demonstrations
    per prompt (prompt + response), in a fixed order."""
    task = get_task(config)
    c = config.corpus
    if c.num_prompts < 1 or c.demos_per_prompt < 0:
        raise ValueError(
            f"pretrain: corpus.num_prompts must be >= 1 and corpus.demos_per_prompt >= 0, got "
            f"{c.num_prompts} and {c.demos_per_prompt}"
        )
    prompts = task.prompts("train", c.num_prompts, config.seed)
    docs = list(prompts)
    for k in range(c.demos_per_prompt):
        # a demonstration seed per copy: different responses to the same prompts
        docs += [p + r for p, r in task.demonstrations("train", c.num_prompts, config.seed + k)]
    return docs


def train_tokenizer(texts, *, vocab_size: int, min_frequency: int):
    """Byte-level BPE on `texts` with <pad>=0, <bos>=1, <eos>=2 (BOS prepended by
    `encode(..., add_special_tokens=True)`), as an `alignment.tokenizer.Tokenizer`."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"pretrain: tokenizer.vocab_size={vocab_size} is below the 256 byte tokens + "
            f"{len(SPECIAL_TOKENS)} special tokens of byte-level BPE"
        )
    tok = tokenizers.Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    config = {
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 20,
    }
    return Tokenizer.from_tokenizers(tok, **config)


# ----------------------------------------------------------------------------- training


def train_config(
    config, *, tokenizer_dir: str, init_dir: str, data_dir: str
) -> ml_collections.ConfigDict:
    """`config.train` (an engine config of kind "sft") with the run's paths filled in: the
    corpus as documents with an empty prompt, so every token is trained. Only keys the stage
    config declares are set (it stays locked)."""
    t = config.train.copy_and_resolve_references()
    t.seed = config.seed
    t.tokenizer = tokenizer_dir
    t.model.init_from = init_dir
    t.data.source = "jsonl"
    t.data.format = "plain"
    t.data.files.train = os.path.join(data_dir, "train.jsonl")
    t.data.files.test = os.path.join(data_dir, "test.jsonl")
    t.export_hf = True
    return t


def pretrain(config, out_dir) -> pathlib.Path:
    """Trains the base of `config` from scratch into `out_dir` (written whole, then renamed)."""
    out_dir = pathlib.Path(out_dir)
    docs = corpus(config)
    tokenizer = train_tokenizer(
        docs, vocab_size=config.tokenizer.vocab_size, min_frequency=config.tokenizer.min_frequency
    )
    model_cfg = model_config(config, tokenizer.vocab_size)
    log.info(
        "pretrain %s: %d documents, %d BPE ids, %.2fM parameters",
        config.task,
        len(docs),
        tokenizer.vocab_size,
        model_cfg.num_params() / 1e6,
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tokenizer.save(work / "tokenizer")
        # random init as a HF folder: the engine takes its architecture from init_from
        mesh = sharding.make_mesh(config.train.mesh.to_dict())
        graphdef, params, _ = engine.init_params(model_cfg, mesh, config.seed)
        ckpt_lib.export_hf(graphdef, params, str(work / "init"), tokenizer=tokenizer)
        del params
        rows = [{"prompt": "", "completion": d} for d in docs]
        n_eval = max(1, min(config.corpus.eval_docs, len(rows) // 10))
        # held-out documents for the engine's eval loss; the last ones (demonstrations)
        data_lib.write_jsonl(rows, work / "data" / "train.jsonl")
        data_lib.write_jsonl(rows[-n_eval:], work / "data" / "test.jsonl")
        t = train_config(
            config,
            tokenizer_dir=str(work / "tokenizer"),
            init_dir=str(work / "init"),
            data_dir=str(work / "data"),
        )
        learners.run(t, str(work / "run"))
        final = work / "run" / "hf"
        with open(final / CONFIG_RECORD, "w") as f:
            json.dump(
                {
                    "hash": config_hash(config),
                    "config": config.to_dict(),
                    "num_documents": len(docs),
                },
                f,
                indent=2,
                sort_keys=True,
            )
        shutil.copy(work / "run" / "metrics.jsonl", final / "pretrain_metrics.jsonl")
        for f in final.iterdir():
            f.chmod(
                0o644
            )  # some writers create owner-only files; a shipped or shared cache must be readable
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(final, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def resolve_base(config) -> tuple[pathlib.Path, str]:
    """(folder, how): an existing base for `config` ("cache" or "shipped"), else (cache folder, "train")."""
    get_task(config)  # an unknown task fails before any file is touched
    target = cache_dir(config)
    if (target / "config.json").is_file():
        check_base(target, config)
        return target, "cache"
    if not config.cache_dir:
        shipped = shipped_base(config)
        if shipped is not None:
            check_base(shipped, config)
            return shipped, "shipped"
    if target.exists() and any(target.iterdir()):
        raise ValueError(
            f"{target} exists and is not empty but holds no config.json: not a base model folder; "
            "delete it or point cache_dir elsewhere"
        )
    return target, "train"


def build_base(config) -> pathlib.Path:
    """The HF folder of `config`'s base: reused when present (cache or shipped), else trained."""
    path, how = resolve_base(config)
    if how == "train":
        pretrain(config, path)
        check_base(path, config)
    log.info("base model (%s): %s", how, path)
    return path


def describe(path) -> dict[str, Any]:
    """Parameter count, shape and file sizes of a base folder (for reports)."""
    path = pathlib.Path(path)
    with open(path / "config.json") as f:
        hf = json.load(f)
    cfg = hf_lib.config_from_hf(hf)
    return {
        "path": str(path),
        "num_params": cfg.num_params(),
        **{k: getattr(cfg, k) for k in SHAPE_FIELDS},
        "bytes": sum(p.stat().st_size for p in path.iterdir() if p.is_file()),
    }
