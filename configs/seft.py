"""SEFT (self-evolution fine-tuning): SFT policy -> revise-or-keep reviser -> rounds of
sample on unlabeled prompts / revise / SFT. Pipeline: `experiments/pipelines/seft.py`; the
pieces: `alignment/learners/seft.py`.

    python -m experiments.train --config configs/seft.py:tiny --workdir /tmp/seft
    python -m experiments.train --config configs/seft.py:tiny,label_format=keep_token,filter=changed --workdir DIR
    python -m experiments.train --config configs/seft.py:tiny --workdir DIR \
        --config.seft.source_policy=/path/to/stronger_hf      # external evolution

Arg string: `tiny` (tiny model, sorting of 3-5 single digits, an SFT stage of its own; a couple
of minutes on CPU), `task=<embedded task>` (`task_options` are the sorting knobs only for
sorting), `label_format=full|keep_token` (the reviser's target for a draft that is already good:
the draft copied in full, or `reviser.keep_marker`), `filter=none|changed|oracle_not_worse`
(which revisions a round trains on; `oracle_not_worse` reads the gold reward: an ablation),
`pairs=both|samples|corruptions` (where the reviser's ranked pairs come from).

`stage` is the engine config every SEFT stage trains with (the policy's SFT stage, the reviser,
each round: kind `sft`); the pipeline sets each stage's steps, learning rate, lengths, starting
weights and data (`seft.*_steps`, `reviser.steps`, ...). `seed`, `task`, `tokenizer` are shared.
"""

from __future__ import annotations

import ml_collections

from alignment.engine.config import base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = parse_arg(
        arg,
        {
            "tiny": False,
            "task": "sorting",
            "label_format": "full",
            "filter": "none",
            "pairs": "both",
        },
    )
    tiny = bool(args["tiny"])
    c = ml_collections.ConfigDict()
    c.kind = "seft"
    c.seed = 0
    c.task = str(args["task"])
    c.tokenizer = "tiny" if tiny else ""
    # the SFT policy's HF folder when seft.sft_steps == 0; else the weights the SFT stage starts
    # from ("" = a fresh model.preset)
    c.init_from = ""
    # knobs of the task (alignment.tasks.get_task(task, **task_options)): sorting of 3-5 distinct
    # digits, where a tiny character model learns the task and a reviser has errors left to fix
    c.task_options = ml_collections.ConfigDict(
        {"length": (3, 5), "value_range": (0, 9)} if c.task == "sorting" else {}
    )
    c.seft = ml_collections.ConfigDict(
        {
            # train prompts with a demonstration (SFT stage, reviser pairs)
            "num_labeled": 64 if tiny else 2048,
            # further train prompts, never shown with a demonstration
            "num_unlabeled": 64 if tiny else 8192,
            # SFT of init_from ("" = fresh preset) on the labeled demonstrations; 0 = init_from
            # already is the SFT policy
            "sft_steps": 40 if tiny else 0,
            "sft_learning_rate": 3e-3 if tiny else 1e-5,
            "rounds": 1 if tiny else 2,
            # SFT steps per round on (x, y') (+ the labeled rows)
            "round_steps": 20 if tiny else 500,
            "round_learning_rate": 1e-3 if tiny else 5e-6,
            "mix_labeled": True,  # each round also trains on the labeled demonstrations
            "filter": str(args["filter"]),  # none | changed | oracle_not_worse
            "source_policy": "",  # HF folder: external evolution (revise this model's drafts, not pi's)
            "temperature": 1.0,  # drafts y ~ pi(x) (and the eval samples)
            "max_new_tokens": 16 if tiny else 256,
            "batch_size": 256,  # generation batch
            # test prompts: gold reward after every round (0 = off)
            "num_eval_prompts": 16 if tiny else 128,
        }
    )
    c.reviser = ml_collections.ConfigDict(
        {
            "path": "",  # a trained reviser's HF folder: skip the reviser stage
            "label_format": str(args["label_format"]),  # full | keep_token
            "keep_marker": "<keep>",
            "template": "{prompt}\ndraft: {response}\nrevision: ",  # one plain-text prompt: x and the draft y
            "pairs": str(args["pairs"]),  # both | samples | corruptions
            # SFT samples per labeled prompt, ranked by gold reward
            "samples_per_prompt": 2 if tiny else 4,
            "temperature": 1.0,
            "corruptions_per_prompt": 2,  # task.corrupt(best, k ~ U{1..max_swaps}) per labeled prompt
            "max_swaps": 2,
            "keep_rows_per_prompt": 1,  # (x, best -> keep) rows per labeled prompt
            "init_from": "policy",  # policy (the SFT policy's weights) | scratch (fresh model.preset)
            "steps": 40 if tiny else 1000,
            "learning_rate": 3e-3 if tiny else 1e-5,
            "max_prompt_len": 64 if tiny else 1024,
            "max_len": 96 if tiny else 1536,
            "max_new_tokens": 16 if tiny else 256,  # greedy revision
        }
    )
    # the engine settings of every stage (SFT on plain-text jsonl rows)
    t = base_config("sft", {"tiny": tiny, "loss": "sft"})
    t.seed = c.get_ref("seed")
    t.data.seed = c.get_ref("seed")
    t.tokenizer = c.get_ref("tokenizer")
    t.tensorboard = False
    t.progress_bar = False
    t.keep_checkpoints = 1
    t.checkpoint_async = False
    t.eval_every_steps = 0
    t.export_hf = True  # a stage's export is what the next stage reads
    t.data.source, t.data.format = "jsonl", "plain"
    t.data.max_prompt_len = 24 if tiny else 512  # the policy's stages; the reviser has its own
    t.data.max_len = 48 if tiny else 768
    if tiny:
        t.global_batch_size = 16
        t.model.logprob_chunk_size = 64
        t.optim.warmup_steps = (
            4  # at most; a stage of n steps warms up for max(1, min(n // 10, this))
        )
    c.stage = t
    c.lock()
    return c
