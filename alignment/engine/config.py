"""The config schema shared by every training config, and config files loaded outside `--config`.

`configs/*.py` build on these (`base_config(kind, args)` holds the defaults of every engine
config); tests and notebooks load a config file the way the command line does:

    from alignment.engine.config import base_config, get_config, override, parse_arg
    config = base_config("sft", parse_arg("tiny", {"tiny": False, "loss": "sft"}))
    config = get_config("configs/dpo.py", "tiny", {"model.dtype": "bfloat16"})

`override(config, {"optim.lr": 1.0})` (and `python -m experiments.train --config.optim.lr=1`)
fail with a `KeyError` naming the unknown key and the nearest known ones (`check_override_keys`).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any, Iterable, Mapping

import ml_collections

from alignment import data, losses


def parse_arg(arg: str | None, allowed: dict[str, object]) -> dict[str, object]:
    """'tiny,loss=ipo' -> {'tiny': True, 'loss': 'ipo'} over `allowed` (name -> default)."""
    out = dict(allowed)
    for part in filter(None, (arg or "").split(",")):
        key, sep, value = part.partition("=")
        key = key.strip()
        if key not in allowed:
            raise ValueError(
                f"unknown config argument {key!r} in {arg!r}; allowed: {sorted(allowed)}"
            )
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
    return ml_collections.ConfigDict(losses.defaults(loss))


def base_config(kind: str, args: dict[str, object]) -> ml_collections.ConfigDict:
    """The defaults of every engine config of `kind` (sft | preference | reward_model ...);
    `args` holds `tiny` (bool) and `loss` (a name of `alignment.losses.available()`)."""
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
    # "tiny" or a folder with tokenizer.json (+ tokenizer_config.json)
    c.tokenizer = "tiny" if tiny else ""

    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    c.distributed = ml_collections.ConfigDict(
        {
            "num_processes": 1,
            "process_id": 0,
            "coordinator_address": "",
            "cpu_collectives": "gloo",  # CPU-only multi-process runs need a collectives backend
        }
    )
    c.model = ml_collections.ConfigDict(
        {
            "preset": "tiny" if tiny else "qwen3-0.6b",
            "init_from": "",  # a Hugging Face folder; "" = random init from `preset`
            # compute dtype; "bfloat16" with param_dtype float32 = f32 master weights
            "dtype": "float32",
            "param_dtype": "float32",
            "scan_layers": False,
            "remat_policy": "none",
            "logprob_chunk_size": 32 if tiny else 512,
            # recompute each chunk's [B, chunk, V] logits in the backward pass (memory O(B*chunk*V));
            # False keeps them all (O(B*T*V) memory, 2*B*T*D*V fewer FLOPs)
            "logprob_remat": True,
        }
    )
    c.optim = ml_collections.ConfigDict(
        {
            "name": "adamw",
            "learning_rate": 1e-3 if tiny else 1e-5,
            "schedule": "cosine",  # constant | linear | cosine
            "warmup_steps": 2 if tiny else 50,
            "end_lr_factor": 0.1,
            "b1": 0.9,
            "b2": 0.95,
            "eps": 1e-8,
            "weight_decay": 0.0 if tiny else 0.01,
            "decay_min_ndim": 2,
            "no_decay_regex": r"(norm|bias|embed|wpe|wte|scale)",
            "max_grad_norm": 1.0,
            "freeze_regex": "",  # parameters whose '/'-path matches stay fixed
        }
    )
    c.loss = str(args["loss"])
    c.loss_kwargs = loss_defaults(c.loss)
    c.reference = ml_collections.ConfigDict({"mode": "in_step"})  # in_step | precomputed
    c.data = data.default_data_config(kind)
    if tiny:
        c.data.max_prompt_len = 20  # the longest synthetic prompt is 19 tokens: none is cut
        c.data.max_len = 32
    return c


def short_stage(
    c, *, steps: int, batch: int, lr: float, warmup: int, max_prompt_len: int, max_len: int
):
    """Sets engine config `c` up as one stage of a multi-run experiment: `steps` steps, one
    checkpoint at the end, exported to WORKDIR/hf, no eval loss or TensorBoard, plain-text data.
    Returns `c`."""
    c.num_train_steps = steps
    c.global_batch_size = batch
    c.checkpoint_every_steps = steps
    c.keep_checkpoints = 1
    c.checkpoint_async = False
    c.log_every_steps = max(1, steps // 10)
    c.eval_every_steps = 0
    c.export_hf = True
    c.tensorboard = False
    c.progress_bar = False
    c.optim.learning_rate = lr
    c.optim.warmup_steps = warmup
    c.optim.weight_decay = 0.0
    c.data.format = "plain"
    c.data.max_prompt_len = max_prompt_len
    c.data.max_len = max_len
    return c


# ----------------------------------------------------------------------------- dotted keys


def known_keys(config, prefix: str = "") -> list[str]:
    """Every dotted key of `config` (`"optim.learning_rate"`, ...), sections included."""
    out = []
    for key in config.keys():
        value = config[key]
        name = f"{prefix}{key}"
        out.append(name)
        if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
            out.extend(known_keys(value, name + "."))
    return out


def _is_section(node) -> bool:
    return isinstance(node, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict, dict))


def _subsequence(short: str, long: str) -> bool:
    it = iter(long)
    return all(ch in it for ch in short)


def nearest_keys(config, key: str, n: int = 5) -> list[str]:
    """Known dotted keys of `config` nearest to the unknown `key`: the leaf names of its
    deepest existing section ranked by similarity ("lr" -> "learning_rate"), then whole keys
    anywhere in the config (difflib)."""
    parts = key.split(".")
    node, depth = config, 0
    while depth < len(parts) - 1 and _is_section(node) and parts[depth] in node:
        node, depth = node[parts[depth]], depth + 1
    section = ".".join(parts[:depth])
    leaf = parts[depth]
    near = []
    if _is_section(node):

        def score(name):
            return (
                difflib.SequenceMatcher(None, leaf, name).ratio()
                + 0.5 * _subsequence(leaf, name)
                + 0.25 * name.startswith(leaf[:1])
            )

        ranked = sorted(node.keys(), key=lambda name: -score(name))
        near = [f"{section}.{name}" if section else name for name in ranked if score(name) >= 0.6][
            :3
        ]
    for k in difflib.get_close_matches(key, known_keys(config), n=n, cutoff=0.6):
        if k not in near:
            near.append(k)
    return near[:n]


def unknown_key_message(config, key: str) -> str | None:
    """None when dotted `key` exists in `config`, else a message naming it and the nearest known
    keys."""
    node = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if _is_section(node) and part in node:
            node = node[part]
            continue
        if not _is_section(node):
            return (
                f"config key {key!r}: {'.'.join(parts[:i])!r} is a {type(node).__name__} value, not a "
                "section with keys"
            )
        near = nearest_keys(config, key)
        hint = f"; nearest known keys: {', '.join(near)}" if near else ""
        return f"unknown config key {key!r}{hint}"
    return None


def check_override_keys(config, keys: Iterable[str]) -> None:
    """KeyError naming the first dotted key of `keys` that `config` does not have, with the
    nearest known keys (difflib)."""
    for key in keys:
        message = unknown_key_message(config, key)
        if message:
            raise KeyError(message)


def override(config, overrides: Mapping[str, Any]):
    """Sets dotted keys (`{"model.dtype": "bfloat16"}`) as `--config.model.dtype=bfloat16` would,
    types checked by the ConfigDict. On a locked config (what `get_config` returns) a key it does
    not have is a KeyError naming the key and the nearest known keys. Returns `config`."""
    if config.is_locked:
        check_override_keys(config, overrides)
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def cli_override_keys(argv: Iterable[str], flag: str = "config") -> list[str]:
    """The dotted keys of `--<flag>.<key>=value` / `--<flag>.<key> value` arguments in `argv`."""
    keys = []
    for arg in argv:
        for dashes in ("--", "-"):
            if arg.startswith(f"{dashes}{flag}."):
                keys.append(arg[len(dashes) + len(flag) + 1 :].split("=", 1)[0])
                break
    return keys


def check_cli_overrides(
    argv: Iterable[str], flag: str = "config", default: str | None = None
) -> None:
    """Before absl parses `argv`: a KeyError naming the first `--<flag>.<key>=...` whose key the
    config file of `--<flag>=<path>[:arg]` (or `default`) does not have, with the nearest known
    keys (absl would fail on it with a bare `AttributeError: "'key'"`). Does nothing without
    overrides or a config file, or when the config file does not load (absl reports that)."""
    argv = list(argv)
    if "--" in argv:
        argv = argv[: argv.index("--")]
    spec = default
    for i, arg in enumerate(argv):
        for dashes in ("--", "-"):
            if arg.startswith(f"{dashes}{flag}="):
                spec = arg.split("=", 1)[1]
            elif arg == f"{dashes}{flag}" and i + 1 < len(argv):
                spec = argv[i + 1]
    keys = cli_override_keys(argv, flag)
    if spec is None or not keys:
        return
    path, _, config_arg = spec.partition(":")
    try:
        config = load_file(path).get_config(config_arg or None)
    except Exception:  # noqa: BLE001 - a config that does not load is absl's error to report
        return
    check_override_keys(config, keys)


# ----------------------------------------------------------------------------- config files


def load_file(path: str | os.PathLike) -> ModuleType:
    """The config module at `path` (e.g. `configs/dpo.py`), loaded once per path."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config file {path}")
    stem = os.path.splitext(os.path.basename(path))[0]
    key = f"_alignment_configs_{stem}_{abs(hash(path)):x}"
    module = sys.modules.get(key)
    if module is None:
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[key] = module
    return module


def get_config(
    path: str | os.PathLike, arg: str | None = None, overrides: Mapping[str, Any] | None = None
):
    """`get_config(arg)` of the config file at `path`, with `overrides` applied (see `override`)."""
    return override(load_file(path).get_config(arg), overrides or {})
