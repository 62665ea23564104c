"""Bradley-Terry reward model: an LM with a one-label score head trained on preference pairs.

    python -m experiments.train --config configs/reward_model.py:tiny --workdir /tmp/rm
    python -m experiments.train --config configs/reward_model.py:tiny,label_temperature=0.2 --workdir DIR
    python -m experiments.train --config configs/reward_model.py --workdir DIR \
        --config.tokenizer=SFT_HF --config.model.init_from=SFT_HF \
        --config.data.source=tfds --config.data.builder=alignment_hh_rlhf ...

The score is read at each sequence's last real token (prompt + response + EOS) and trained with
`-logsig(s_c - s_r - margin)` (+ TRL's `center_rewards_coefficient`); metrics: loss, accuracy,
margin, chosen_scores, rejected_scores (and their eval_ versions on held-out pairs). The export
(`export_hf=True`, on in tiny) is a `*ForSequenceClassification` folder that
`alignment.rewards.make_reward(kind="reward_model", path=WORKDIR/hf)` and transformers'
`AutoModelForSequenceClassification` load. `init_from` a causal LM drops its LM head and starts
a fresh score head.

Arg string: `tiny` (2-layer model on gold-labelled pairs of the embedded sentiment task: two
continuations of a review opening ranked by VADER; a few minutes on CPU at most), `task=<name>`
(the embedded task the tiny pairs come from), `label_temperature=<t>` (> 0: train labels are
Bradley-Terry draws from the gold scorer at that temperature; held-out pairs keep gold labels),
`loss=<name>` (a loss of family reward_model).
"""

from __future__ import annotations

import ml_collections

from alignment.engine.config import base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(
        arg, {"tiny": False, "loss": "bradley_terry", "task": "sentiment", "label_temperature": 0.0}
    )
    config = base_config("preference", args)  # the data are preference pairs
    config.kind = "reward_model"
    config.task = str(args["task"]) if args["tiny"] else ""
    if args["tiny"]:
        # held-out accuracy on 128 gold pairs: ~0.91 at step 50, ~0.98 at step 100 (1e-2, batch 16)
        config.num_train_steps = 100
        config.checkpoint_every_steps = 100
        config.eval_every_steps = 50
        config.eval_batches = 8
        config.global_batch_size = 16
        config.log_every_steps = 10
        config.export_hf = True
        config.optim.learning_rate = 1e-2
        config.optim.warmup_steps = 10
        config.data.source = "task"
        config.data.task_source.name = str(args["task"])
        config.data.task_source.num_examples = 2048
        config.data.task_source.num_eval_examples = 128
        config.data.task_source.label_temperature = float(args["label_temperature"])
        config.data.max_prompt_len = 64
        config.data.max_len = 128
    else:
        config.optim.learning_rate = 1e-5  # InstructGPT / TRL reward-model range
        config.optim.warmup_steps = 50
    config.lock()
    return config
