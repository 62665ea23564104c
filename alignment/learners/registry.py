"""Learners by `config.kind`: each learner module registers the function that runs it.

    register("sft", train_offline, validate=validate_offline)
    run(config, workdir)       # the learner of config.kind
    validate(config)           # its checks, before anything is built

Paper pipelines above the library (`experiments/pipelines/`) register their kinds the same way.
"""

from __future__ import annotations

from typing import Any, Callable

_RUNNERS: dict[str, tuple[Callable[[Any, str], Any], Callable[[Any], None] | None]] = {}


def register(
    kind: str,
    run_fn: Callable[[Any, str], Any],
    *,
    validate: Callable[[Any], None] | None = None,
    overwrite: bool = False,
) -> None:
    """Makes `run(config, workdir)` call `run_fn(config, workdir)` for `config.kind == kind`."""
    if kind in _RUNNERS and not overwrite and _RUNNERS[kind][0] is not run_fn:
        raise ValueError(
            f"learner kind {kind!r} is already registered; pass overwrite=True to replace it"
        )
    _RUNNERS[kind] = (run_fn, validate)


def kinds() -> tuple[str, ...]:
    return tuple(sorted(_RUNNERS))


def get(kind: str) -> Callable[[Any, str], Any]:
    if kind not in _RUNNERS:
        raise ValueError(
            f"config.kind={kind!r} is not a registered learner; known: {list(kinds())} "
            "(paper pipelines register theirs on `import experiments.pipelines`)"
        )
    return _RUNNERS[kind][0]


def validate(config) -> None:
    """The checks registered for `config.kind` (ValueError naming the key)."""
    get(config.kind)
    check = _RUNNERS[config.kind][1]
    if check is not None:
        check(config)


def run(config, workdir: str, **kwargs):
    """Validates `config`, then runs (or resumes) it in `workdir` with the learner registered for
    `config.kind` (`kwargs` go to that learner, e.g. `extra_metrics` for the offline kinds)."""
    validate(config)
    return get(config.kind)(config, workdir, **kwargs)
