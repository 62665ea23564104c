"""Learners: each turns a config of its `kind` into a run on the engine, and registers itself.

    from alignment import learners
    learners.run(config, workdir)     # validates config (the kind's checks), then runs its learner
    learners.register("my_kind", run_fn, validate=check_fn)

Built in: `sft`, `preference`, `reward_model` (`offline_loop.py`: demonstrations, pairs, a
reward model; the batch -> loss pieces in `offline.py` and `reward_model.py`) and `online`
(`pg.py`: PPO, GRPO and variants, Self-Rewarding PPO; `online_pairs.py`: online DPO, SAIL; their
shared rollout in `online.py` and `rollout.py`). Reusable pieces of the paper methods live here
too (`pairs`, `rso`, `per_step`, `seft`); their multi-stage pipelines live in
`experiments/pipelines/`, which register the kinds `rso`, `per_step` and `seft`.
"""

from alignment.learners import (
    offline,
    offline_loop,
    online,
    online_pairs,
    pg,
    reward_model,
    rollout,
    validation,
)
from alignment.learners.registry import get, kinds, register, run, validate


def train_online(config, workdir: str):
    """The online loop of `config.online.algorithm`: pairwise (online DPO, SAIL) or policy-gradient."""
    loop = online_pairs.train_pairs if config.online.algorithm in online.PAIRWISE else pg.train_pg
    return loop(config, workdir)


for _kind in validation.KINDS:
    register(_kind, offline_loop.train_offline, validate=validation.validate_config)
register("online", train_online, validate=online.validate_online)

__all__ = [
    "get",
    "kinds",
    "offline",
    "offline_loop",
    "online",
    "online_pairs",
    "pg",
    "register",
    "reward_model",
    "rollout",
    "run",
    "validate",
    "validation",
]
