"""Offline preference optimisation: DPO or any registered preference loss.

    python -m experiments.train --config configs/dpo.py:tiny --workdir /tmp/dpo
    python -m experiments.train --config configs/dpo.py:tiny,loss=ipo --workdir /tmp/ipo
    python -m experiments.train --config configs/dpo.py:loss=simpo --workdir DIR ...

Arg string: `tiny`, `loss=<name>` (any loss of family preference / token_preference in
`alignment.losses.available()`; its knobs land in `config.loss_kwargs` with the loss's own
defaults), `reference=in_step|precomputed` (reference log-probs from frozen weights inside the
step, or computed once per example outside it and cached).
"""

from __future__ import annotations

import ml_collections

from alignment.engine.config import base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(arg, {"tiny": False, "loss": "dpo", "reference": "in_step"})
    config = base_config("preference", args)
    config.reference.mode = str(args["reference"])
    if not args["tiny"]:
        config.optim.learning_rate = 5e-7  # the DPO paper's range is 5e-7..1e-6
        config.optim.warmup_steps = 150
    config.lock()
    return config
