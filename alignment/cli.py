"""Shared set-up of the command-line entry points in `experiments/`."""

from __future__ import annotations

import logging

from absl import flags


def setup_logging() -> None:
    """Our own progress (data reports, stages) at INFO; libraries that log through `absl.logging`
    (Orbax's per-save chatter) only from WARNING unless `--verbosity`/`-v` is given."""
    logging.getLogger("alignment").setLevel(logging.INFO)
    if not flags.FLAGS["verbosity"].present:
        logging.getLogger("absl").setLevel(logging.WARNING)
