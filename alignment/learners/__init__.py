"""Learners turn a batch into loss inputs through a log-prob function; they never build a model.

`offline`: SFT demonstrations and preference pairs (with the reference in-step or precomputed).
"""

from alignment.learners import offline
from alignment.learners import registry
from alignment.learners.registry import get, kinds, register


def run(config, workdir: str, **kwargs):
    """Runs `config` in `workdir` with the learner of `config.kind` (scaffold: the engine's loop
    for the offline kinds until they register)."""
    if config.kind in kinds():
        return get(config.kind)(config, workdir, **kwargs)
    from alignment import train  # scaffold only
    return train.train(config, workdir, **kwargs)


def validate(config) -> None:
    """The checks of `config.kind` (scaffold: the offline checks for kinds not registered yet)."""
    if config.kind in kinds():
        return registry.validate(config)
    from alignment.learners.validation import validate_config  # scaffold only
    return validate_config(config)


__all__ = ["get", "kinds", "offline", "register", "run", "validate"]
