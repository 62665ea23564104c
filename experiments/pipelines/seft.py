"""The SEFT pipeline (`config.kind == "seft"`, `configs/seft.py`): SFT policy -> reviser ->
`seft.rounds` of sample / revise / SFT, built from `alignment.learners.seft` (reviser rows,
revision labels and parsing, a round's rows and filter).

Layout: WORKDIR/sft (skipped when `seft.sft_steps == 0`: then `init_from` is the SFT policy),
WORKDIR/reviser (skipped when `reviser.path` is given), WORKDIR/round_<r> (data/, stats.json,
revisions.jsonl: every draft, the reviser's output, kept or not and both gold rewards; hf/),
WORKDIR/metrics.jsonl (one line per round) and WORKDIR/seft.json (everything, incl. the final
policy's path). Stages whose export exists are reused, so a re-run finishes fast.

    python -m experiments.train --config configs/seft.py:tiny --workdir /tmp/seft
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional, Sequence

from alignment import checkpoint as ckpt_lib
from alignment import data as data_lib
from alignment import engine, models, tasks
from alignment import metrics as metrics_lib
from alignment.evaluation import read_json, write_json
from alignment.learners import seft as seft_lib
from alignment.learners.seft import FILTERS, LABEL_FORMATS, PAIR_SOURCES, REVISER_INITS
from experiments.pipelines import stages

log = logging.getLogger(__name__)

SUMMARY_FILE = "seft.json"
REVISIONS = "revisions.jsonl"


def make_task(config):
    return tasks.get_task(config.task, **config.task_options.to_dict())


def check_seft_config(config) -> None:
    """Semantic checks of the `seft` and `reviser` sections, before anything is trained."""
    s, r = config.seft, config.reviser
    if r.label_format not in LABEL_FORMATS:
        raise ValueError(
            f"config.reviser.label_format must be one of {LABEL_FORMATS}, got {r.label_format!r}"
        )
    if r.pairs not in PAIR_SOURCES:
        raise ValueError(f"config.reviser.pairs must be one of {PAIR_SOURCES}, got {r.pairs!r}")
    if r.init_from not in REVISER_INITS:
        raise ValueError(
            f"config.reviser.init_from must be one of {REVISER_INITS}, got {r.init_from!r}"
        )
    if s.filter not in FILTERS:
        raise ValueError(f"config.seft.filter must be one of {FILTERS}, got {s.filter!r}")
    for field in ("{prompt}", "{response}"):
        if field not in r.template:
            raise ValueError(f"config.reviser.template={r.template!r} must contain {field}")
    if r.label_format == "keep_token" and not r.keep_marker.strip():
        raise ValueError(
            "config.reviser.keep_marker must be a non-empty string for label_format='keep_token'"
        )
    for key in ("num_labeled", "rounds", "round_steps", "max_new_tokens", "batch_size"):
        if int(s[key]) < 1:
            raise ValueError(f"config.seft.{key} must be >= 1, got {s[key]}")
    for key in ("num_unlabeled", "sft_steps", "num_eval_prompts"):
        if int(s[key]) < 0:
            raise ValueError(f"config.seft.{key} must be >= 0, got {s[key]}")
    for key in ("steps", "max_new_tokens", "max_prompt_len", "max_len"):
        if int(r[key]) < 1:
            raise ValueError(f"config.reviser.{key} must be >= 1, got {r[key]}")
    for key in (
        "samples_per_prompt",
        "corruptions_per_prompt",
        "max_swaps",
        "keep_rows_per_prompt",
    ):
        if int(r[key]) < 0:
            raise ValueError(f"config.reviser.{key} must be >= 0, got {r[key]}")
    if r.pairs in ("samples", "both") and r.samples_per_prompt < 1:
        raise ValueError(f"config.reviser.pairs={r.pairs!r} needs reviser.samples_per_prompt >= 1")
    if r.pairs in ("corruptions", "both") and (r.corruptions_per_prompt < 1 or r.max_swaps < 1):
        raise ValueError(
            f"config.reviser.pairs={r.pairs!r} needs reviser.corruptions_per_prompt >= 1 and "
            "reviser.max_swaps >= 1"
        )
    if r.keep_rows_per_prompt < 1:
        raise ValueError(
            "config.reviser.keep_rows_per_prompt must be >= 1: revise-or-keep needs keep rows"
        )
    if not s.temperature > 0 or not r.temperature > 0:
        raise ValueError(
            "config.seft.temperature and config.reviser.temperature must be > 0 (sampling drafts)"
        )
    if s.num_unlabeled == 0 and not s.mix_labeled:
        raise ValueError(
            "config.seft.num_unlabeled=0 with mix_labeled=False leaves the rounds no data"
        )
    if not s.sft_steps and not config.init_from:
        raise ValueError(
            "config.seft.sft_steps=0 means config.init_from is the SFT policy: set it, or "
            "set seft.sft_steps > 0 to SFT one on the labeled demonstrations first"
        )
    if s.source_policy and not os.path.isfile(os.path.join(s.source_policy, "config.json")):
        raise ValueError(
            f"config.seft.source_policy={s.source_policy!r} is not an HF folder (no config.json)"
        )
    if r.path and not os.path.isfile(os.path.join(r.path, "config.json")):
        raise ValueError(f"config.reviser.path={r.path!r} is not an HF folder (no config.json)")
    if config.stage.data.chat_template:
        raise ValueError(
            "config.stage.data.chat_template=True is not supported by SEFT: its rows are plain text"
        )
    make_task(config)  # the task and its options exist


def stage_config(
    config,
    *,
    steps: int,
    learning_rate: float,
    max_prompt_len: int,
    max_len: int,
    init_from: str,
    data_dir: str,
    task: str,
):
    """The engine SFT config of one stage (policy SFT, reviser or a round): `config.stage` with
    the stage's steps, learning rate, lengths and starting weights, reading
    `data_dir/{train,test}.jsonl`."""
    c = config.stage.copy_and_resolve_references()
    c.task = task
    c.num_train_steps = int(steps)
    c.checkpoint_every_steps = int(steps)  # a stage's export is what the next stage reads
    c.log_every_steps = max(1, int(steps) // 10)
    c.model.init_from = init_from
    c.optim.learning_rate = float(learning_rate)
    c.optim.warmup_steps = max(1, min(int(steps) // 10, c.optim.warmup_steps))
    c.data.files.train = os.path.join(data_dir, "train.jsonl")
    c.data.files.test = os.path.join(data_dir, "test.jsonl")
    c.data.max_prompt_len, c.data.max_len = int(max_prompt_len), int(max_len)
    return c


# ----------------------------------------------------------------------------- stages


def split_prompts(config, task) -> tuple[list[tuple[str, str]], list[str]]:
    """(labeled demonstrations, unlabeled prompts): disjoint train prompts of the same draw, the
    unlabeled ones after the labeled (a larger `num_unlabeled` extends, never reshuffles, them)."""
    s = config.seft
    prompts = task.prompts("train", int(s.num_labeled) + int(s.num_unlabeled), config.seed)
    labeled = task.demonstrations("train", int(s.num_labeled), config.seed)
    if [p for p, _ in labeled] != prompts[: len(labeled)]:
        raise AssertionError(
            f"task {task.name!r}: demonstrations are not the prompts' prefix; SEFT's labeled/"
            "unlabeled split needs prompts(n) to be a prefix of prompts(m > n)"
        )
    return labeled, prompts[len(labeled) :]


def _write_rows(rows, held, data_dir):
    data_lib.write_jsonl(held, os.path.join(data_dir, "test.jsonl"))
    data_lib.write_jsonl(rows, os.path.join(data_dir, "train.jsonl"))


def _held_out(config, task) -> list[dict]:
    # the engine's jsonl source wants a test split; its eval loss is off (eval_every_steps = 0)
    return [
        {"prompt": p, "completion": c} for p, c in task.demonstrations("validation", 8, config.seed)
    ]


def sft_stage(config, workdir: str) -> str:
    """The SFT policy: `init_from` ("" = a fresh preset) SFT'd on the labeled demonstrations
    for `seft.sft_steps`; exported to `workdir/hf`. With `sft_steps == 0`, `init_from`."""
    s = config.seft
    if not s.sft_steps:
        return os.path.abspath(config.init_from)
    task = make_task(config)
    labeled, _ = split_prompts(config, task)
    data_dir = os.path.join(workdir, "data")
    if not os.path.isfile(os.path.join(data_dir, "train.jsonl")):
        _write_rows(
            [{"prompt": p, "completion": c} for p, c in labeled], _held_out(config, task), data_dir
        )
    c = stage_config(
        config,
        steps=s.sft_steps,
        learning_rate=s.sft_learning_rate,
        max_prompt_len=config.stage.data.max_prompt_len,
        max_len=config.stage.data.max_len,
        init_from=config.init_from,
        data_dir=data_dir,
        task=config.task,
    )
    return stages.run_stage(c, workdir)


def reviser_stage(config, workdir: str, policy_hf: str) -> str:
    """The reviser: trained on `reviser_rows` of the labeled prompts; exported to `workdir/hf`
    (`reviser.path` when given). Its data statistics go to `workdir/stats.json`."""
    r = config.reviser
    if r.path:
        return os.path.abspath(r.path)
    hf = os.path.join(os.path.abspath(workdir), "hf")
    if os.path.isfile(os.path.join(hf, "config.json")):
        return hf
    task = make_task(config)
    labeled, _ = split_prompts(config, task)
    samples = None
    if r.pairs in ("samples", "both"):
        tok = engine.make_tokenizer(config.tokenizer)
        samples = stages.sample(
            policy_hf,
            tok,
            [p for p, _ in labeled],
            samples_per_prompt=int(r.samples_per_prompt),
            max_new_tokens=int(config.seft.max_new_tokens),
            temperature=float(r.temperature),
            seed=config.seed * 1000 + 17,
            batch_size=int(config.seft.batch_size),
        ).texts
    rows, stats = seft_lib.reviser_rows(task, labeled, samples, cfg=r, seed=config.seed)
    held, _ = seft_lib.reviser_rows(
        task,
        task.demonstrations("validation", 8, config.seed),
        None,
        cfg=_corruption_only(r, task),
        seed=config.seed + 1,
    )
    data_dir = os.path.join(workdir, "data")
    _write_rows(rows, held, data_dir)
    write_json(stats, os.path.join(workdir, "stats.json"))
    log.info("seft reviser data: %s", stats)
    init = policy_hf if r.init_from == "policy" else ""
    c = stage_config(
        config,
        steps=r.steps,
        learning_rate=r.learning_rate,
        max_prompt_len=r.max_prompt_len,
        max_len=r.max_len,
        init_from=init,
        data_dir=data_dir,
        task="",
    )
    return stages.run_stage(c, workdir)


def _corruption_only(r, task):
    # held-out reviser rows (the engine's jsonl source wants a test split) need no policy samples:
    # keep rows, and corruptions where the task has them
    c = r.copy_and_resolve_references()
    c.pairs = "corruptions"
    if not hasattr(task, "corrupt"):
        c.corruptions_per_prompt = 0
    return c


def revise(
    reviser,
    tokenizer,
    prompts: Sequence[str],
    drafts: Sequence[str],
    *,
    cfg,
    seed: int,
    batch_size: int,
) -> tuple[list[str], list[bool]]:
    """Greedy reviser outputs (and whether each ended with EOS) for (prompt, draft) pairs."""
    inputs = [seft_lib.reviser_prompt(cfg.template, x, y) for x, y in zip(prompts, drafts)]
    out = stages.sample(
        "",
        tokenizer,
        inputs,
        samples_per_prompt=1,
        max_new_tokens=int(cfg.max_new_tokens),
        temperature=0.0,
        seed=seed,
        batch_size=batch_size,
        policy=reviser,
    )
    return [t[0] for t in out.texts], [f[0] for f in out.finished]


def _write_revisions(task, prompts, drafts, outputs, finished, r, path):
    # every draft and what the reviser made of it, for inspection (the round's stats summarise it)
    rows = []
    for x, y, o, done in zip(prompts, drafts, outputs, finished):
        revised, kept = seft_lib.parse_revision(
            y, o, label_format=r.label_format, keep_marker=r.keep_marker
        )
        rows.append(
            {
                "prompt": x,
                "draft": y,
                "output": o,
                "finished": bool(done),
                "kept": kept,
                "draft_gold": task.gold_reward(x, y),
                "revised_gold": task.gold_reward(x, revised),
            }
        )
    data_lib.write_jsonl(rows, path)


def _gold_eval(policy_hf, tokenizer, task, config) -> float:
    s = config.seft
    prompts = task.prompts("test", int(s.num_eval_prompts), 0)
    out = stages.sample(
        policy_hf,
        tokenizer,
        prompts,
        samples_per_prompt=1,
        max_new_tokens=int(s.max_new_tokens),
        temperature=float(s.temperature),
        seed=0,
        batch_size=int(s.batch_size),
    )
    return float(task.gold_rewards(prompts, out.flat()).mean())


def train_seft(config, workdir: str) -> dict:
    """SFT policy -> reviser -> `seft.rounds` of sample / revise / SFT; returns the summary that
    is also written to WORKDIR/seft.json; its "policy" is the final policy's HF folder."""
    check_seft_config(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    s, r = config.seft, config.reviser
    task = make_task(config)
    labeled, unlabeled = split_prompts(config, task)
    tokenizer = engine.make_tokenizer(config.tokenizer)

    policy_hf = sft_stage(config, os.path.join(workdir, "sft"))
    reviser_hf = (
        reviser_stage(config, os.path.join(workdir, "reviser"), policy_hf) if unlabeled else None
    )
    out = {
        "sft_policy": policy_hf,
        "reviser": reviser_hf,
        "source_policy": s.source_policy or None,
        "labeled_prompts": len(labeled),
        "unlabeled_prompts": len(unlabeled),
        "rounds": [],
    }
    rstats = os.path.join(workdir, "reviser", "stats.json")
    if reviser_hf and os.path.isfile(rstats):
        with open(rstats) as f:
            out["reviser_data"] = json.load(f)
    if s.num_eval_prompts:
        out["eval_gold_sft"] = _gold_eval(policy_hf, tokenizer, task, config)
    writer = metrics_lib.MetricsWriter(
        workdir, total_steps=int(s.rounds), tensorboard=config.stage.tensorboard, progress=False
    )
    reviser = None
    labeled_rows = [{"prompt": p, "completion": c} for p, c in labeled] if s.mix_labeled else []
    try:
        for rnd in range(1, int(s.rounds) + 1):
            rdir = os.path.join(workdir, f"round_{rnd}")
            stats_path = os.path.join(rdir, "stats.json")
            hf = os.path.join(rdir, "hf")
            if os.path.isfile(os.path.join(hf, "config.json")) and os.path.isfile(stats_path):
                with open(stats_path) as f:
                    stats = json.load(f)
            else:
                rows, stats = [], {"unlabeled_prompts": 0, "revised_rows": 0, "dropped": 0}
                if unlabeled:
                    source = s.source_policy or policy_hf
                    drafts = stages.sample(
                        source,
                        tokenizer,
                        unlabeled,
                        samples_per_prompt=1,
                        max_new_tokens=int(s.max_new_tokens),
                        temperature=float(s.temperature),
                        seed=config.seed * 1000 + rnd,
                        batch_size=int(s.batch_size),
                    ).flat()
                    if reviser is None:
                        reviser = models.from_pretrained(reviser_hf)
                    outputs, finished = revise(
                        reviser,
                        tokenizer,
                        unlabeled,
                        drafts,
                        cfg=r,
                        seed=rnd,
                        batch_size=int(s.batch_size),
                    )
                    rows, stats = seft_lib.round_rows(
                        task, unlabeled, drafts, outputs, finished, cfg=s, reviser_cfg=r
                    )
                    stats["draft_source"] = source
                    _write_revisions(
                        task, unlabeled, drafts, outputs, finished, r, os.path.join(rdir, REVISIONS)
                    )
                    log.info("seft round %d: %s", rnd, stats)
                if not rows and not labeled_rows:
                    raise ValueError(
                        f"seft round {rnd}: every revision was dropped ({stats}); loosen seft.filter, "
                        "train the reviser longer or set seft.mix_labeled=True"
                    )
                stats["labeled_rows"] = len(labeled_rows)
                _write_rows(
                    labeled_rows + rows, _held_out(config, task), os.path.join(rdir, "data")
                )
                c = stage_config(
                    config,
                    steps=s.round_steps,
                    learning_rate=s.round_learning_rate,
                    max_prompt_len=config.stage.data.max_prompt_len,
                    max_len=config.stage.data.max_len,
                    init_from=policy_hf,
                    data_dir=os.path.join(rdir, "data"),
                    task=config.task,
                )
                hf = stages.run_stage(c, rdir)
                # experiments.evaluate --workdir ROUND_DIR rebuilds the task from run.json
                ckpt_lib.update_run_record(rdir, task_kwargs=config.task_options.to_dict())
                if s.num_eval_prompts:
                    stats["eval_gold"] = _gold_eval(hf, tokenizer, task, config)
                write_json(stats, stats_path)
            policy_hf = hf
            out["rounds"].append(stats)
            writer.write(
                rnd,
                {k: v for k, v in stats.items() if isinstance(v, (int, float)) and v is not None},
            )
    finally:
        writer.close()
    out["policy"] = policy_hf
    write_json(out, os.path.join(workdir, SUMMARY_FILE))
    return out


def summary(workdir: str) -> Optional[dict]:
    """What `train_seft` wrote to WORKDIR/seft.json (None before it finished)."""
    return read_json(os.path.join(workdir, SUMMARY_FILE))


__all__ = [
    "REVISIONS",
    "SUMMARY_FILE",
    "check_seft_config",
    "make_task",
    "revise",
    "reviser_stage",
    "sft_stage",
    "split_prompts",
    "stage_config",
    "summary",
    "train_seft",
]
