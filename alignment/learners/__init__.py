"""Learners turn a batch into loss inputs through a log-prob function; they never build a model.

`offline`: SFT demonstrations and preference pairs (with the reference in-step or precomputed).
"""

from alignment.learners import offline
from alignment.learners.registry import get, kinds, register, validate


def run(config, workdir: str):
    """Runs `config` in `workdir` with the learner of `config.kind` (scaffold: the engine's loop
    for the offline kinds until they register)."""
    if config.kind in kinds():
        return get(config.kind)(config, workdir)
    from alignment import train  # scaffold only
    return train.train(config, workdir)


__all__ = ["get", "kinds", "offline", "register", "run", "validate"]
