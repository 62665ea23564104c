"""Loading one config file from another.

`ml_collections.config_flags` loads `configs/<name>.py` by path, not as a package module, so a
config that builds on another (every training config starts from `configs/sft.py`'s
`base_config`) loads its sibling by path too:

    sft = sibling(__file__, "sft")
    config = sft.base_config("preference", args)
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType


def sibling(config_file: str, name: str) -> ModuleType:
    """The config module `<dir of config_file>/<name>.py`, loaded once per path."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{config_file}: no sibling config {path}")
    key = f"_alignment_configs_{name}_{abs(hash(path)):x}"
    module = sys.modules.get(key)
    if module is None:
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[key] = module
    return module
