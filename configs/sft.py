"""Supervised fine-tuning on demonstrations (token-mean NLL over response tokens).

    python -m experiments.train --config configs/sft.py:tiny --workdir /tmp/sft
    python -m experiments.train --config configs/sft.py --workdir DIR \
        --config.tokenizer=/path/to/hf_model --config.model.init_from=/path/to/hf_model \
        --config.data.source=tfds --config.data.builder=alignment_gsm8k ...

Arg string (comma-separated, big_vision style): `tiny` (2-layer model, synthetic sorting task,
runs on CPU in well under a minute), `loss=<name>` (any supervised loss).
The defaults shared by every training config are `alignment.engine.config.base_config(kind, args)`.
"""

from __future__ import annotations

import ml_collections

from alignment.engine.config import base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, {"tiny": False, "loss": "sft"})
    config = base_config("sft", args)
    config.lock()
    return config
