"""Pretrain (or reuse) a tiny base LM with its BPE tokenizer on an embedded task's corpus.

    python -m experiments.pretrain --config configs/pretrain.py:sentiment [--config.key=value ...]
    python -m experiments.pretrain --config configs/pretrain.py:sentiment --export alignment/assets/bases/sentiment

Prints the base folder (a Hugging Face folder: config.json, model.safetensors, tokenizer.json,
tokenizer_config.json). A base already in the cache, or shipped with the package for the same
config, is reused; `--export DIR` also copies the base to DIR (how the shipped base is made).
"""

from __future__ import annotations

import os
import shutil
import sys

from absl import app, flags
from ml_collections import config_flags

from alignment import pretrain
from alignment.cli import setup_logging
from alignment.engine.config import check_cli_overrides

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/pretrain.py[:task]", lock_config=True
)
_EXPORT = flags.DEFINE_string("export", "", "also copy the base folder here (replacing it)")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    path = pretrain.build_base(_CONFIG.value)
    if _EXPORT.value and os.path.abspath(_EXPORT.value) != os.path.abspath(path):
        dst = os.path.abspath(_EXPORT.value)
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(path, dst, ignore=shutil.ignore_patterns("*.tmp"))
        path = dst
    info = pretrain.describe(path)
    print(
        f"base: {path} ({info['num_params'] / 1e6:.2f}M parameters, vocab {info['vocab_size']}, "
        f"{info['bytes'] / 2**20:.2f} MiB)"
    )


if __name__ == "__main__":
    try:
        check_cli_overrides(sys.argv)
    except KeyError as e:
        sys.exit(f"FATAL Flags parsing error: {e.args[0]}")
    sys.exit(app.run(main))
