"""The per-step negatives pipeline (`config.kind == "per_step"`, `configs/per_step.py`):
pi_sft (the `sft` stage or `init_from`) -> verified samples -> RFT rows, or Monte-Carlo step
values -> first-pit pairs, or the naive full-response pairs (`alignment.learners.per_step`) ->
the final stage in WORKDIR (`rft` or `preference`). Samples and rollouts live in
`per_step.samples_dir` (default WORKDIR/samples) and are reused by every method run on the same
pi_sft and settings; every count goes to `WORKDIR/per_step.json`.

    python -m experiments.train --config configs/per_step.py:tiny --workdir /tmp/per_step
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from alignment import checkpoint as ckpt_lib
from alignment import data as data_lib
from alignment import engine, learners, models, tasks
from alignment.learners import per_step as per_step_lib
from alignment.learners.per_step import CHOSEN, METHODS, NoTrainingRows
from experiments.pipelines import stages

log = logging.getLogger(__name__)

STATS_FILE = "per_step.json"
DATA_DIR = "per_step_data"

__all__ = [
    "DATA_DIR",
    "NoTrainingRows",
    "STATS_FILE",
    "check_per_step_config",
    "method_config",
    "sft_config",
    "summary",
    "train_per_step",
    "validate",
]


# ----------------------------------------------------------------------------- configs


def check_per_step_config(config) -> None:
    """Semantic checks of a `per_step` config (before any model is loaded); `validate` also
    checks its stages."""
    s = config.per_step
    if s.method not in METHODS:
        raise ValueError(f"config.per_step.method must be one of {METHODS}, got {s.method!r}")
    if s.chosen not in CHOSEN:
        raise ValueError(f"config.per_step.chosen must be one of {CHOSEN}, got {s.chosen!r}")
    for key in (
        "num_problems",
        "samples_per_problem",
        "rollouts",
        "k",
        "max_new_tokens",
        "batch_size",
    ):
        if int(s[key]) < 1:
            raise ValueError(f"config.per_step.{key} must be >= 1, got {s[key]}")
    if s.k > s.rollouts:
        raise ValueError(
            f"config.per_step.k={s.k} exceeds config.per_step.rollouts={s.rollouts}: the best-of-K "
            "value needs at least K rollouts per prefix"
        )
    if s.negatives_per_problem < 0 or s.sft_steps < 0:
        raise ValueError(
            "config.per_step.negatives_per_problem (0 = all) and sft_steps must be >= 0"
        )
    if not s.temperature > 0:
        raise ValueError(f"config.per_step.temperature must be > 0, got {s.temperature}")
    if not config.init_from and not s.sft_steps:
        raise ValueError(
            "per-step negatives start from an SFT policy: set config.init_from to its HF folder, "
            "or config.per_step.sft_steps > 0 to SFT one on the task's demonstrations first"
        )
    for stage in ("sft", "rft", "preference"):
        if config[stage].data.chat_template:
            raise ValueError(
                f"config.{stage}.data.chat_template=True is not supported by per_step: its rows are "
                "plain text"
            )


def validate(config, workdir: str = "WORKDIR") -> None:
    """`check_per_step_config`, the task's step tools, then the checks of the stages that will run."""
    check_per_step_config(config)
    get_task(config)
    learners.validate(method_config(config, workdir, config.init_from or "<sft stage>"))
    if not config.init_from:
        learners.validate(sft_config(config, workdir))


def get_task(config):
    task = tasks.get_task(config.task, **config.per_step.task_kwargs.to_dict())
    missing = [name for name in ("verify", "step_prefixes") if not hasattr(task, name)]
    if missing or not task.has_verifier:
        raise ValueError(
            f"config.task={config.task!r}: per-step negatives need a verifier and step tools "
            f"(step_prefixes); missing {missing or ['has_verifier']}"
        )
    return task


def _with_data(stage, init_from: str, data_dir: str):
    c = stage.copy_and_resolve_references()
    c.model.init_from = init_from
    c.data.files.train = os.path.join(data_dir, "train.jsonl")
    return c


def sft_config(config, workdir: str):
    """The `sft` stage (WORKDIR/sft) on the task's demonstrations of the `num_problems` train
    problems."""
    return _with_data(config.sft, "", os.path.join(workdir, "sft", "data"))


def method_config(config, workdir: str, init_from: str):
    """The final stage in `workdir`: `rft` (SFT on correct samples) or `preference` (DPO on the
    pairs of per_step, naive), starting from `init_from`."""
    stage = config.rft if config.per_step.method == "rft" else config.preference
    return _with_data(stage, init_from, os.path.join(workdir, DATA_DIR))


# ----------------------------------------------------------------------------- generation


def _load_json(path):
    with open(path) as f:
        return json.load(f)


def _dump_json(obj, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def _cached(path: str, settings: dict):
    """The JSON at `path` when it was made with `settings`; an error when made with others."""
    if not os.path.isfile(path):
        return None
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as stored
    obj = _load_json(path)
    if obj.get("settings") != settings:
        changed = sorted(
            k
            for k in set(settings) | set(obj.get("settings", {}))
            if settings.get(k) != obj.get("settings", {}).get(k)
        )
        raise ValueError(
            f"{path} was made with other settings ({changed}); use a fresh per_step.samples_dir"
        )
    return obj


def sft_policy(config, workdir: str, task) -> str:
    """`config.init_from`, or the `sft` stage on the problems' demonstrations (WORKDIR/sft/hf)."""
    if config.init_from:
        return os.path.abspath(config.init_from)
    out = os.path.join(workdir, "sft")
    hf = os.path.join(out, "hf")
    if os.path.isfile(os.path.join(hf, "config.json")):
        return hf
    demos = task.demonstrations("train", int(config.per_step.num_problems), config.seed)
    data_lib.write_jsonl(
        ({"prompt": p, "completion": c} for p, c in demos), os.path.join(out, "data", "train.jsonl")
    )
    learners.run(sft_config(config, workdir), out)
    return hf


def generate(
    config, task, tokenizer, sft_hf: str, samples_dir: str
) -> tuple[per_step_lib.SampleSet, dict]:
    """`samples_per_problem` verified samples of pi_sft per train problem (cached in samples_dir)."""
    s = config.per_step
    settings = {
        "sft_policy": sft_hf,
        "task": config.task,
        "task_kwargs": s.task_kwargs.to_dict(),
        "seed": config.seed,
        "num_problems": s.num_problems,
        "samples_per_problem": s.samples_per_problem,
        "temperature": s.temperature,
        "max_new_tokens": s.max_new_tokens,
    }
    path = os.path.join(samples_dir, "samples.json")
    cached = _cached(path, settings)
    if cached is None:
        demos = task.demonstrations("train", int(s.num_problems), config.seed)
        prompts = [p for p, _ in demos]
        out = stages.sample(
            sft_hf,
            tokenizer,
            prompts,
            samples_per_prompt=s.samples_per_problem,
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            seed=config.seed,
            batch_size=s.batch_size,
            policy=models.from_pretrained(sft_hf),
        )
        correct = [[bool(task.verify(p, t)) for t in row] for p, row in zip(prompts, out.texts)]
        cached = {
            "settings": settings,
            "prompts": prompts,
            "texts": out.texts,
            "finished": out.finished,
            "correct": correct,
            "demonstrations": [c for _, c in demos],
        }
        _dump_json(cached, path)
    samples = per_step_lib.SampleSet(
        cached["prompts"], cached["texts"], cached["correct"], cached["demonstrations"]
    )
    acc = np.asarray(cached["correct"], np.float64)
    stats = {
        "sample_accuracy": float(acc.mean()),
        "problems_any_correct": float(acc.any(1).mean()),
        "finished_fraction": float(np.mean(cached["finished"])),
    }
    return samples, stats


def step_values_for(
    config, task, tokenizer, sft_hf: str, samples: per_step_lib.SampleSet, samples_dir: str
) -> dict[tuple[int, int], per_step_lib.StepValues]:
    """Step values of every negative the pairs may use (cached in samples_dir)."""
    s = config.per_step
    plan, _ = per_step_lib.pair_plan(
        samples, chosen=s.chosen, negatives_per_problem=s.negatives_per_problem
    )
    settings = {
        "sft_policy": sft_hf,
        "seed": config.seed,
        "rollouts": s.rollouts,
        "k": s.k,
        "temperature": s.temperature,
        "max_new_tokens": s.max_new_tokens,
        "plan": [list(x) for x in plan],
    }
    path = os.path.join(samples_dir, "step_values.json")
    cached = _cached(path, settings)
    if cached is None:
        fn = per_step_lib.policy_rollout_fn(
            models.from_pretrained(sft_hf),
            tokenizer,
            task,
            rollouts=s.rollouts,
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            seed=config.seed,
            batch_size=s.batch_size,
        )
        values = per_step_lib.estimate_step_values(
            task,
            [samples.prompts[g] for g, _ in plan],
            [samples.texts[g][j] for g, j in plan],
            fn,
            k=s.k,
        )
        cached = {"settings": settings, "values": [v.to_json() for v in values]}
        _dump_json(cached, path)
    return {
        (g, j): per_step_lib.StepValues.from_json(v) for (g, j), v in zip(plan, cached["values"])
    }


def train_per_step(config, workdir: str):
    """pi_sft -> samples -> RFT data or per-step / naive pairs -> the final stage in `workdir`."""
    workdir = os.path.abspath(workdir)
    validate(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    s = config.per_step
    task = get_task(config)
    tokenizer = engine.make_tokenizer(config.tokenizer)
    eos_ok = per_step_lib.prefix_eos_supported(tokenizer)
    sft_hf = sft_policy(config, workdir, task)
    samples_dir = os.path.abspath(s.samples_dir or os.path.join(workdir, "samples"))
    samples, stats = generate(config, task, tokenizer, sft_hf, samples_dir)
    stats.update({"method": s.method, "sft_policy": sft_hf, "samples_dir": samples_dir})
    if s.method == "rft":
        rows, counts = per_step_lib.rft_rows(samples)
    else:
        values = None
        if s.method == "per_step":
            values = step_values_for(config, task, tokenizer, sft_hf, samples, samples_dir)
        rows, counts = per_step_lib.make_pairs(
            samples,
            task,
            method=s.method,
            chosen=s.chosen,
            negatives_per_problem=s.negatives_per_problem,
            seed=config.seed,
            step_values=values,
        )
        if s.method == "per_step":
            stats["prefix_eos_supported"] = eos_ok
            if not eos_ok:
                log.warning(
                    "per_step: the preference data path appends EOS to rejected prefixes "
                    "(rejected_is_prefix is not honoured); DPO also pushes down log p(EOS | prefix)"
                )
    stats.update(counts)
    _dump_json(stats, os.path.join(workdir, STATS_FILE))
    log.info("per_step: %s", stats)
    if not rows:
        raise NoTrainingRows(
            f"per_step ({s.method}): no training row survived ({stats}); sample more "
            "(per_step.samples_per_problem, num_problems) or use a stronger SFT policy"
        )
    data_lib.write_jsonl(rows, os.path.join(workdir, DATA_DIR, "train.jsonl"))
    extra = {
        k: float(v) for k, v in counts.items() if isinstance(v, (int, float)) and np.isfinite(v)
    }
    extra["sample_accuracy"] = stats["sample_accuracy"]
    state = learners.run(method_config(config, workdir, sft_hf), workdir, extra_metrics=extra)
    # experiments.evaluate rebuilds the task from run.json; the DPO stage's record knows only its name
    ckpt_lib.update_run_record(workdir, task_kwargs=s.task_kwargs.to_dict())
    return state


def summary(workdir: str) -> dict | None:
    """The statistics `train_per_step` wrote (None before it ran)."""
    path = os.path.join(workdir, STATS_FILE)
    return _load_json(path) if os.path.isfile(path) else None
