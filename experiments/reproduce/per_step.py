"""Miniature reproduction of Setlur et al., 2024, "RL on incorrect synthetic data scales the
efficiency of LLM math reasoning by eight-fold" (per-step negatives).

Claim (the paper, GSM8K/MATH): at an equal number of problems, DPO on per-step negatives (pairs
of a correct solution and an incorrect response cut after its critical step, the first pit of
Monte-Carlo best-of-5 step values, pi_ref = pi_sft) beats rejection fine-tuning (RFT: SFT on
pi_sft's verified-correct samples), which beats SFT; naive DPO on full correct vs incorrect
responses does not beat SFT. Expected order: per-step DPO > RFT > SFT >= naive DPO.

Miniature: the `arithmetic` task with operands 1..9, two or three +/- operations (one
equation per line, then `answer: N`); a fresh tiny model SFT'd on N synthetic solutions;
`samples_per_problem` samples of pi_sft on the same N problems; then `configs/per_step.py` with
method=rft | per_step | naive from pi_sft for the same number of steps and learning rate.
Metric: greedy verifier accuracy on held-out `test` problems (the same ones for every seed and
method). Every stage is reused from `--workdir` on a re-run.

Rule: `supported` when mean(per_step) > mean(rft) > mean(sft) and mean(naive) <= mean(sft) +
std(sft), where each strict ">" must clear the larger of the two rows' sample stds (a
difference inside the seed spread is not evidence).

    python -m experiments.reproduce.per_step --out runs/reproduce/per_step            # 3 seeds
    python -m experiments.reproduce.per_step --quick --out /tmp/per_step_quick        # a smoke run
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np

from alignment import learners, tasks
from alignment.engine.config import get_config, load_file
from alignment.tokenizer import tiny_tokenizer
from experiments.pipelines import per_step, stages
from experiments.reproduce import common

NAME = "per_step"
PAPER = (
    "Setlur, Garg, Geng, Garg, Smith, Kumar (2024). RL on incorrect synthetic data scales the "
    "efficiency of LLM math reasoning by eight-fold. arXiv:2406.14532"
)
CLAIM = (
    "At an equal number of problems, DPO on per-step negatives (correct solution vs incorrect "
    "prefix through its first-pit critical step, Monte-Carlo best-of-5 step values, reference = "
    "SFT) beats RFT, RFT beats SFT, and naive full-response DPO does not beat SFT "
    "(per-step DPO > RFT > SFT >= naive DPO)."
)
METHODS = ("sft", "rft", "per_step", "naive")
CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "configs",
    "per_step.py",
)

FULL = dict(
    num_problems=256,
    sft_steps=300,
    sft_lr=3e-3,
    sft_batch=32,
    samples_per_problem=4,
    rollouts=5,
    k=5,
    negatives_per_problem=1,
    train_steps=64,
    train_batch=16,
    train_lr=3e-4,
    beta=0.1,
    max_new_tokens=40,
    eval_prompts=256,
)
QUICK = dict(
    num_problems=8,
    sft_steps=20,
    sft_lr=3e-3,
    sft_batch=8,
    samples_per_problem=2,
    rollouts=2,
    k=2,
    negatives_per_problem=1,
    train_steps=2,
    train_batch=8,
    train_lr=3e-4,
    beta=0.1,
    max_new_tokens=32,
    eval_prompts=8,
)

log = logging.getLogger("alignment.reproduce.per_step")


def load_config_module():
    return load_file(CONFIG)


def make_task():
    return tasks.get_task("arithmetic", **load_config_module().EASY_ARITHMETIC)


def sft_stage(task, workdir: str, s: dict, seed: int) -> str:
    """pi_sft: a fresh tiny model SFT'd on the N problems' synthetic solutions (WORKDIR/hf)."""
    data_dir = stages.write_demonstrations(
        task, os.path.join(workdir, "data"), num_prompts=s["num_problems"], seed=seed, num_eval=16
    )
    c = stages.sft_stage_config(
        steps=s["sft_steps"], lr=s["sft_lr"], batch=s["sft_batch"], max_prompt_len=32, max_len=96
    )
    c.task = "arithmetic"
    return stages.run_stage(
        stages.with_data(c, data_dir=data_dir, seed=seed, tokenizer="tiny", init_from=""), workdir
    )


def method_config(method: str, s: dict, seed: int, sft_hf: str, samples_dir: str):
    return get_config(
        CONFIG,
        f"tiny,method={method}",
        {
            # seed: also every stage's seed and data.seed; the rft stage follows the preference stage's
            # steps, batch, warmup and logging
            "seed": seed,
            "init_from": sft_hf,
            "tokenizer": "tiny",
            "preference.num_train_steps": s["train_steps"],
            "preference.checkpoint_every_steps": s["train_steps"],
            "preference.global_batch_size": s["train_batch"],
            "preference.optim.learning_rate": s["train_lr"],
            "preference.optim.warmup_steps": max(1, s["train_steps"] // 10),
            "preference.loss_kwargs.beta": s["beta"],
            "preference.log_every_steps": max(1, s["train_steps"] // 4),
            "preference.progress_bar": False,
            "per_step.num_problems": s["num_problems"],
            "per_step.samples_per_problem": s["samples_per_problem"],
            "per_step.rollouts": s["rollouts"],
            "per_step.k": s["k"],
            "per_step.negatives_per_problem": s["negatives_per_problem"],
            "per_step.max_new_tokens": s["max_new_tokens"],
            "per_step.rft_learning_rate": s["train_lr"],
            "per_step.samples_dir": samples_dir,
            "per_step.chosen": "sample_or_demonstration",
        },
    )


def run_method(method: str, s: dict, seed: int, sft_hf: str, seed_dir: str) -> tuple[str, dict]:
    """The method's final policy (pi_sft itself when no training row survived) and its stats."""
    workdir = os.path.join(seed_dir, method)
    hf = os.path.join(workdir, "hf")
    if not os.path.isfile(os.path.join(hf, "config.json")):
        try:
            learners.run(
                method_config(method, s, seed, sft_hf, os.path.join(seed_dir, "samples")), workdir
            )
        except per_step.NoTrainingRows as e:
            log.warning("%s seed %d: %s; its policy stays pi_sft", method, seed, e)
            return sft_hf, dict(per_step.summary(workdir) or {}, untrained=True)
    return hf, dict(per_step.summary(workdir) or {}, untrained=False)


def accuracy(policy_hf: str, task, prompts, s: dict, cache: str) -> float:
    """Greedy verifier accuracy on `prompts` (cached in `cache`)."""
    key = {
        "policy": os.path.abspath(policy_hf),
        "prompts": len(prompts),
        "max_new_tokens": s["max_new_tokens"],
    }
    if os.path.isfile(cache):
        with open(cache) as f:
            got = json.load(f)
        if got["settings"] == key:
            return float(got["accuracy"])
    out = stages.sample(
        policy_hf,
        tiny_tokenizer(),
        prompts,
        samples_per_prompt=1,
        max_new_tokens=s["max_new_tokens"],
        temperature=0.0,
        seed=0,
    )
    acc = float(np.mean([task.verify(p, row[0]) for p, row in zip(prompts, out.texts)]))
    with open(cache + ".tmp", "w") as f:
        json.dump({"settings": key, "accuracy": acc}, f)
    os.replace(cache + ".tmp", cache)
    return acc


def decide(rows: dict[str, dict]) -> tuple[bool, str]:
    """The docstring's rule on {method: common.stats(...)} of accuracy."""

    def beats(a, b):
        return rows[a]["mean"] > rows[b]["mean"] + max(rows[a]["std"], rows[b]["std"])

    checks = {
        "per_step > rft": beats("per_step", "rft"),
        "rft > sft": beats("rft", "sft"),
        "naive <= sft + std": rows["naive"]["mean"] <= rows["sft"]["mean"] + rows["sft"]["std"],
    }
    means = ", ".join(f"{m} {rows[m]['mean']:.3f} ± {rows[m]['std']:.3f}" for m in METHODS)
    failed = [k for k, ok in checks.items() if not ok]
    if not failed:
        return (
            True,
            f"supported: per-step DPO > RFT > SFT >= naive DPO beyond the seed spread ({means})",
        )
    held = [k for k, ok in checks.items() if ok]
    return False, (
        f"not supported: {', '.join(failed)} fail(s) beyond the seed spread"
        f"{' (holding: ' + ', '.join(held) + ')' if held else ''}; accuracy {means}"
    )


def main(argv=None) -> dict:
    args = common.parse_args(NAME, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    start = time.time()
    s = dict(QUICK if args.quick else FULL)
    task = make_task()
    eval_prompts = task.prompts("test", s["eval_prompts"], 0)
    seeds = list(range(args.seeds))
    acc = {m: [] for m in METHODS}
    diag = {
        k: []
        for k in (
            "sft_sample_accuracy",
            "rft_examples",
            "per_step_pairs",
            "naive_pairs",
            "critical_is_first_error",
            "dropped_negatives_no_pit",
            "dropped_problems_no_incorrect",
        )
    }
    untrained = []
    for seed in seeds:
        seed_dir = os.path.join(args.workdir, f"seed{seed}")
        sft_hf = sft_stage(task, os.path.join(seed_dir, "sft"), s, seed)
        policies, stats = {"sft": sft_hf}, {}
        for method in ("rft", "per_step", "naive"):
            policies[method], stats[method] = run_method(method, s, seed, sft_hf, seed_dir)
            if stats[method]["untrained"]:
                untrained.append(f"{method}/seed{seed}")
        for method in METHODS:
            acc[method].append(
                accuracy(
                    policies[method],
                    task,
                    eval_prompts,
                    s,
                    os.path.join(seed_dir, f"accuracy_{method}.json"),
                )
            )
        diag["sft_sample_accuracy"].append(stats["rft"].get("sample_accuracy", float("nan")))
        diag["rft_examples"].append(stats["rft"].get("rft_examples", 0))
        diag["per_step_pairs"].append(stats["per_step"].get("pairs", 0))
        diag["naive_pairs"].append(stats["naive"].get("pairs", 0))
        diag["critical_is_first_error"].append(
            stats["per_step"].get("critical_is_first_error", float("nan"))
        )
        diag["dropped_negatives_no_pit"].append(
            stats["per_step"].get("dropped_negatives_no_pit", 0)
        )
        diag["dropped_problems_no_incorrect"].append(
            stats["per_step"].get("dropped_problems_no_incorrect", 0)
        )
        log.info("seed %d: %s", seed, {m: acc[m][-1] for m in METHODS})
    rows = [common.row(m, seeds, accuracy=acc[m]) for m in METHODS]
    supported, verdict = decide({r["method"]: r["accuracy"] for r in rows})
    if untrained:
        verdict += f"; untrained (no data, policy = SFT): {', '.join(untrained)}"
    # a statistic with nothing to count (e.g. no pair had a checkable first error) is null, not NaN
    diag = {
        k: [None if isinstance(v, float) and not np.isfinite(v) else v for v in vals]
        for k, vals in diag.items()
    }
    settings = dict(
        s,
        task="arithmetic",
        task_kwargs=load_config_module().EASY_ARITHMETIC,
        eval="greedy verifier accuracy on held-out test problems",
        per_seed_diagnostics=diag,
    )
    plots = [
        common.bar_plot(
            rows,
            "accuracy",
            os.path.join(args.out, "accuracy.png"),
            title="per-step negatives: held-out accuracy",
        )
    ]
    return common.write_results(
        args.out,
        name=NAME,
        paper=PAPER,
        claim=CLAIM,
        supported=supported,
        verdict=verdict,
        rows=rows,
        settings=settings,
        quick=args.quick,
        wall_clock_s=time.time() - start,
        plots=plots,
    )


if __name__ == "__main__":
    main()
