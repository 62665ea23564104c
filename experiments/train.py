"""Train (or resume) from a config file.

    python -m experiments.train --config configs/<name>.py[:arg] --workdir DIR [--config.key=value ...]

Re-running the same command with the same --workdir resumes from the latest checkpoint
(parameters, optimizer, RNG and data position). Unknown `--config.*` keys (named with the
nearest known keys) and values of the wrong type fail before anything is built.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from alignment import learners
from alignment.cli import setup_logging
from alignment.engine.config import check_cli_overrides
from experiments import pipelines  # noqa: F401 (registers the pipeline kinds rso, per_step, seft)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/<name>.py[:arg]", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "directory for checkpoints, metrics.jsonl, tensorboard"
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    learners.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    try:
        check_cli_overrides(sys.argv)
    except KeyError as e:
        sys.exit(f"FATAL Flags parsing error: {e.args[0]}")
    sys.exit(app.run(main))
