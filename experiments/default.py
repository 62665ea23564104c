"""The default experiment: tiny base -> SFT -> gold-labelled pairs from the SFT policy -> DPO -> evaluation.

    python -m experiments.default --workdir runs/default [--seed N] [--quick] [--config.key=value ...]

Stages (each reused when its output exists, so re-running is fast):
  1. base      `alignment.pretrain.build_base(config.pretrain)`: the shipped base when the config
               matches it, else the cache, else trained (BPE tokenizer + ~1M-parameter LM).
  2. sft       WORKDIR/sft: `alignment.learners.run` (kind "sft") on the task's demonstrations.
  3. pairs     WORKDIR/pairs/train.jsonl: `samples_per_prompt` samples of the SFT policy for each
               train prompt, scored by the task's gold reward; best vs worst makes a pair.
  4. dpo       WORKDIR/dpo: `alignment.learners.run` (kind "preference", DPO, SFT as reference).
  5. evaluate  `alignment.evaluation.evaluate_policy` on held-out prompts: SFT against itself
               (before: win rate 1/2, KL 0) and DPO against SFT (after).
Writes WORKDIR/summary.json ({"before": {...}, "after": {...}, ...}), WORKDIR/eval_{before,after}.json,
WORKDIR/frontier.png (gold reward vs KL) and prints a markdown before/after table.
`python -m experiments.evaluate --workdir WORKDIR/dpo` re-evaluates the DPO run alone.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from alignment import data as data_lib
from alignment import evaluation, pretrain, tasks
from alignment.cli import setup_logging
from alignment.engine.config import check_cli_overrides, load_file
from alignment.evaluation import markdown_table, write_json
from alignment.learners import pairs as pairs_lib
from alignment.tokenizer import Tokenizer
from experiments.pipelines import stages

_CONFIG_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.py"
)
_CONFIG = config_flags.DEFINE_config_file(
    "config", _CONFIG_PATH, "configs/default.py[:quick]", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "output directory")
_SEED = flags.DEFINE_integer(
    "seed", None, "seed of SFT, pair sampling and DPO (overrides config.seed)"
)
_QUICK = flags.DEFINE_bool("quick", False, "smoke run: the config's `quick` variant")

log = logging.getLogger("alignment.default")
SUMMARY_KEYS = (
    "gold_reward",
    "gold_reward_stderr",
    "win_rate",
    "kl",
    "kl_stderr",
    "reference_gold_reward",
    "ranking_accuracy",
    "response_length",
    "truncated_fraction",
)


def _write_json(obj, path):
    return write_json(obj, path)


def _check_workdir(config, workdir: str) -> None:
    """A workdir belongs to one config: reusing stage outputs made with another would mix runs."""
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json_best_effort(sort_keys=True))
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        if previous != current:
            diff = sorted(
                k for k in set(previous) | set(current) if previous.get(k) != current.get(k)
            )
            raise ValueError(
                f"{workdir} holds a run of another config (differs in {diff}); use another "
                "--workdir or delete it"
            )
    else:
        _write_json(current, path)


def _sample_pairs(config, task, tokenizer, sft_hf: str, out_dir: str) -> dict:
    path = os.path.join(out_dir, "train.jsonl")
    stats_path = os.path.join(out_dir, "stats.json")
    if os.path.isfile(path) and os.path.isfile(stats_path):
        with open(stats_path) as f:
            return json.load(f)
    p = config.pairs
    prompts = task.prompts("train", p.num_prompts, config.seed + 1)  # not only the SFT prompts
    texts = stages.sample(
        sft_hf,
        tokenizer,
        prompts,
        samples_per_prompt=p.samples_per_prompt,
        max_new_tokens=p.max_new_tokens,
        temperature=p.temperature,
        seed=config.seed,
        batch_size=p.batch_size,
    ).flat()
    flat_prompts = [q for q in prompts for _ in range(p.samples_per_prompt)]
    rewards = task.gold_rewards(flat_prompts, texts)
    rows, dropped = pairs_lib.best_worst_rows(
        prompts, texts, rewards, samples_per_prompt=p.samples_per_prompt, min_margin=p.min_margin
    )
    if not rows:
        raise ValueError(
            f"pairs: none of the {len(prompts)} prompts gave two samples whose gold rewards differ "
            f"by >= pairs.min_margin={p.min_margin}; sample more (pairs.samples_per_prompt)"
        )
    n_test = max(1, len(rows) // 16)
    data_lib.write_jsonl(rows[n_test:] if len(rows) > n_test else rows, path + ".tmp")
    data_lib.write_jsonl(rows[:n_test], os.path.join(out_dir, "test.jsonl"))
    stats = {
        "prompts": len(prompts),
        "pairs": len(rows),
        "dropped": dropped,
        "sample_gold_reward": float(rewards.mean()),
        "chosen_gold_reward": float(sum(r["chosen_reward"] for r in rows) / len(rows)),
        "rejected_gold_reward": float(sum(r["rejected_reward"] for r in rows) / len(rows)),
    }
    _write_json(stats, stats_path)
    os.replace(path + ".tmp", path)
    return stats


def _evaluate(config, task, tokenizer, policy_hf: str, reference_hf: str, path: str) -> dict:
    e = config.eval
    return stages.evaluate(
        policy_hf,
        reference_hf,
        tokenizer,
        task,
        path=path,
        num_prompts=e.num_prompts,
        samples_per_prompt=e.samples_per_prompt,
        max_new_tokens=e.max_new_tokens,
        temperature=e.temperature,
        seed=e.seed,
        split=e.split,
        batch_size=e.batch_size,
    )


def run(config, workdir: str) -> dict:
    """Runs (or finishes) the default experiment in `workdir`; returns the summary."""
    if config.task not in tasks.available():
        raise ValueError(
            f"config.task={config.task!r} is not an embedded task; valid: {tasks.available()}"
        )
    if config.pretrain.task != config.task:
        raise ValueError(
            f"config.pretrain.task={config.pretrain.task!r} differs from config.task={config.task!r}"
        )
    e, p = config.eval, config.pairs
    for name, value in (
        ("eval.num_prompts", e.num_prompts),
        ("eval.samples_per_prompt", e.samples_per_prompt),
        ("pairs.num_prompts", p.num_prompts),
        ("sft_data.num_prompts", config.sft_data.num_prompts),
    ):
        if value < 1:  # fail before anything trains
            raise ValueError(f"config.{name}={value}: the default experiment needs at least one")
    if p.samples_per_prompt < 2:
        raise ValueError(
            f"config.pairs.samples_per_prompt={p.samples_per_prompt}: a pair needs two samples"
        )
    task = pretrain.get_task(config.pretrain)
    task.prompts(
        e.split, e.num_prompts, e.seed
    )  # the evaluation set exists (else the task says why)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    _check_workdir(config, workdir)
    timings = {}

    t0 = time.perf_counter()
    how = pretrain.resolve_base(config.pretrain)[1]  # "shipped", "cache" or "train"
    base = str(pretrain.build_base(config.pretrain))
    timings["base_s"] = time.perf_counter() - t0
    tokenizer = Tokenizer.from_pretrained(base)

    t0 = time.perf_counter()
    sft_data = os.path.join(workdir, "sft_data")
    if not os.path.isfile(os.path.join(sft_data, "train.jsonl")):
        stages.write_demonstrations(
            task,
            sft_data,
            num_prompts=config.sft_data.num_prompts,
            seed=config.seed,
            num_eval=min(64, config.sft_data.num_prompts),
        )
    sft_hf = stages.run_stage(
        stages.with_data(
            config.sft, data_dir=sft_data, seed=config.seed, tokenizer=base, init_from=base
        ),
        os.path.join(workdir, "sft"),
    )
    timings["sft_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pair_stats = _sample_pairs(config, task, tokenizer, sft_hf, os.path.join(workdir, "pairs"))
    timings["pairs_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    dpo_hf = stages.run_stage(
        stages.with_data(
            config.dpo,
            data_dir=os.path.join(workdir, "pairs"),
            seed=config.seed,
            tokenizer=base,
            init_from=sft_hf,
        ),
        os.path.join(workdir, "dpo"),
    )
    timings["dpo_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    before = _evaluate(
        config, task, tokenizer, sft_hf, sft_hf, os.path.join(workdir, "eval_before.json")
    )
    after = _evaluate(
        config, task, tokenizer, dpo_hf, sft_hf, os.path.join(workdir, "eval_after.json")
    )
    timings["eval_s"] = time.perf_counter() - t0

    points = [
        {
            "kl": before["kl"],
            "gold_reward": before["gold_reward"],
            "label": "SFT",
            "series": "dpo",
            "gold_reward_stderr": before["gold_reward_stderr"],
        },
        {
            "kl": after["kl"],
            "gold_reward": after["gold_reward"],
            "label": "DPO",
            "series": "dpo",
            "gold_reward_stderr": after["gold_reward_stderr"],
            "kl_stderr": after["kl_stderr"],
        },
    ]
    plot = evaluation.frontier_plot(
        points,
        os.path.join(workdir, "frontier.png"),
        title=f"{config.task}: gold reward vs KL(policy || SFT)",
    )
    summary = {
        "task": config.task,
        "seed": config.seed,
        "workdir": workdir,
        "before": {k: before[k] for k in SUMMARY_KEYS if k in before},
        "after": {k: after[k] for k in SUMMARY_KEYS if k in after},
        "pairs": pair_stats,
        "base": {"source": how, **pretrain.describe(base)},
        "policies": {"sft": sft_hf, "dpo": dpo_hf},
        "frontier_plot": plot,
        "timings_s": timings,
    }
    _write_json(summary, os.path.join(workdir, "summary.json"))
    return summary


def _load_config_file():
    return load_file(_CONFIG_PATH)


def table(summary) -> str:
    return markdown_table({"before (SFT)": summary["before"], "after (DPO)": summary["after"]})


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    config = _CONFIG.value
    if _QUICK.value:  # shorthand for --config configs/default.py:quick
        default_cfg = _load_config_file()
        if config.to_dict() != default_cfg.get_config().to_dict():
            raise app.UsageError(
                "--quick replaces the config: pass --config configs/default.py:quick "
                "(with any --config.* overrides) instead of combining them"
            )
        config = default_cfg.get_config("quick")
    if _SEED.value is not None:
        config = config.copy_and_resolve_references()
        config.seed = _SEED.value
    t0 = time.perf_counter()
    summary = run(config, _WORKDIR.value)
    print(
        f"\n{config.task}, seed {config.seed}: {summary['pairs']['pairs']} DPO pairs, "
        f"base from {summary['base']['source']}, {time.perf_counter() - t0:.0f} s\n"
    )
    print(table(summary))
    print(
        f"summary: {os.path.join(summary['workdir'], 'summary.json')}\nplot:    {summary['frontier_plot']}"
    )


if __name__ == "__main__":
    try:
        check_cli_overrides(sys.argv, default=_CONFIG_PATH)
    except KeyError as e:
        sys.exit(f"FATAL Flags parsing error: {e.args[0]}")
    sys.exit(app.run(main))
