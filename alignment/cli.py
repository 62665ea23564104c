"""Shared set-up of the command-line entry points in `experiments/`."""

from __future__ import annotations

import logging


def setup_logging() -> None:
    """Our own progress (data reports, stages) at INFO; libraries that log through `absl.logging`
    (Orbax's per-save chatter) only from WARNING unless `--verbosity`/`-v` is given."""
    from absl import flags
    logging.getLogger("alignment").setLevel(logging.INFO)
    if not flags.FLAGS["verbosity"].present:
        logging.getLogger("absl").setLevel(logging.WARNING)
