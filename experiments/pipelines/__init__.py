"""Multi-stage paper pipelines on top of the library: each chains engine stages
(`alignment.learners.run`) with generation, scoring and JSON caches, and registers its
`config.kind` when this package is imported (`experiments/train.py` imports it):

    rso       `rso.train_rso`            configs/rso.py
    per_step  `per_step.train_per_step`  configs/per_step.py
    seft      `seft.train_seft`          configs/seft.py

`stages` holds what every multi-run experiment shares (demonstrations, a stage run with its
export reused, sampling, a cached evaluation).
"""

from alignment import learners
from experiments.pipelines import per_step, rso, seft, stages

learners.register("rso", rso.train_rso, validate=rso.validate)
learners.register("per_step", per_step.train_per_step, validate=per_step.validate)
learners.register("seft", seft.train_seft, validate=seft.check_seft_config)

__all__ = ["per_step", "rso", "seft", "stages"]
