"""Loading config files outside the `--config` flag.

`ml_collections.config_flags` loads `configs/<name>.py` by path, not as a package module, so a
config that builds on another (every training config starts from `configs/sft.py`'s
`base_config`) loads its sibling by path too, and notebooks and tests load a config the way the
command line does:

    sft = sibling(__file__, "sft")
    config = sft.base_config("preference", args)
    config = get_config("configs/dpo.py", "tiny", {"model.dtype": "bfloat16"})
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType
from typing import Any, Mapping


def load_file(path: str | os.PathLike) -> ModuleType:
    """The config module at `path`, loaded once per path."""
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


def sibling(config_file: str, name: str) -> ModuleType:
    """The config module `<dir of config_file>/<name>.py`."""
    return load_file(os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py"))


def override(config, overrides: Mapping[str, Any]):
    """Sets dotted keys (`{"model.dtype": "bfloat16"}`) as `--config.model.dtype=bfloat16` would,
    types checked by the ConfigDict; a locked config (what `get_config` returns) refuses keys it
    does not have. Returns `config`."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def get_config(path: str | os.PathLike, arg: str | None = None, overrides: Mapping[str, Any] | None = None):
    """`get_config(arg)` of the config file at `path`, with `overrides` applied (see `override`)."""
    return override(load_file(path).get_config(arg), overrides or {})
