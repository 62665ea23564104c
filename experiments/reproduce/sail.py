"""SAIL (online DPO with its extra gradient term) vs offline DPO from the same SFT policy.

Paper: Ding et al., 2024, "SAIL: Self-Improving Efficient Online Alignment of Large Language
Models" (docs/methods.md sections 4 and 6).

Claim: training on preference pairs sampled from the *current* policy (SAIL-PR: pairs labelled
by a reward model, DPO loss plus the score-function term of the policy-dependent sampling)
beats offline DPO on pairs sampled once from the SFT policy, in gold reward and in win rate
against the SFT policy.

Miniature: the embedded sorting task at the tiny online configs' size (3-4 numbers in 0..9, gold
reward = fraction of adjacent pairs in order, 0 for a non-permutation); a tiny model SFT'd on
demonstrations (one SFT policy, seed 0, shared by every seed); then per seed:
  sail         configs/sail.py:tiny (variant pr, the task's gold reward as the reward model),
               `steps` online steps of `prompts` prompts x `group` samples, all pairs of a
               group with different gold rewards (up to `group` per group; ties never paired),
               `epochs` passes per step; the extra term normalised as in the authors' code, with
               coefficient `score_coef` = 0.03: at the authors' 0.3 (and lr 3e-5) the term, which
               has no baseline and pushes every sampled response down, collapsed the policy
               within 15 steps (seed 0: gold 0.43 -> 0.0, KL 10);
  online_dpo   the same loop without the score-function term (configs/online_dpo.py:tiny);
  offline_dpo  configs/dpo.py:tiny on pairs sampled once from the SFT policy: `group` samples
               for each of steps x prompts train prompts, paired the same way, gold-labelled;
               steps x epochs updates of prompts x group rows: the same prompts, samples,
               pairing and number of updates as SAIL, only never re-sampled.
Each policy is evaluated by `stages.evaluate` on held-out (test split) prompts against the SFT
policy: gold reward and win rate (evaluation sampling seed = the run's seed; the SFT row is the
SFT policy on the same prompts and seeds).

Decision rule (`supported`): mean gold reward of sail > mean gold reward of offline_dpo + the
larger of their two standard deviations, and the same for the win rate against the SFT policy.

    python -m experiments.reproduce.sail --out runs/reproduce/sail [--quick] [--seeds N]
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from alignment import data as data_lib
from alignment import tasks
from alignment.engine.config import get_config
from alignment.learners import pairs
from alignment.tokenizer import tiny_tokenizer
from experiments.pipelines import stages
from experiments.reproduce import common

NAME = "sail"
PAPER = (
    "Ding et al., 2024, SAIL: Self-Improving Efficient Online Alignment of Large Language Models"
)
CLAIM = (
    "Online preference learning on pairs sampled from the current policy with SAIL's extra gradient term "
    "(SAIL-PR) beats offline DPO on pairs sampled once from the SFT policy, in gold reward and in win rate "
    "against the SFT policy."
)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASK = "sorting"
TASK_KWARGS = {"length": (3, 4), "value_range": (0, 9)}  # configs/ppo.py TINY_TASKS["sorting"]


def settings_for(quick: bool) -> dict:
    """Every knob of the run (recorded in results.json)."""
    if quick:
        return dict(
            sft_steps=80,
            sft_prompts=512,
            steps=2,
            prompts=8,
            group=8,
            epochs=1,
            lr=3e-5,
            score_coef=0.03,
            eval_prompts=8,
            eval_samples=2,
            max_new_tokens=12,
            methods=["sail", "offline_dpo"],
        )
    return dict(
        sft_steps=300,
        sft_prompts=2048,
        steps=30,
        prompts=8,
        group=8,
        epochs=2,
        lr=3e-5,
        score_coef=0.03,
        eval_prompts=64,
        eval_samples=4,
        max_new_tokens=12,
        methods=["sail", "online_dpo", "offline_dpo"],
    )


# ----------------------------------------------------------------------------- also used by online_gains.py


def make_task():
    return tasks.get_task(TASK, **TASK_KWARGS)


def sft_stage(workdir: str, s: dict) -> str:
    """The shared starting policy: a fresh tiny model SFT'd on the miniature task's demonstrations
    (seed 0), exported to `workdir/sft/hf` (reused when present)."""
    out = os.path.join(workdir, f"sft{s['sft_steps']}")
    hf = os.path.join(out, "hf")
    if os.path.isfile(os.path.join(hf, "config.json")):
        return hf
    data = stages.write_demonstrations(
        make_task(), os.path.join(out, "data"), num_prompts=s["sft_prompts"], seed=0
    )
    c = stages.sft_stage_config(steps=s["sft_steps"], max_prompt_len=16, max_len=32)
    c.task = TASK
    return stages.run_stage(
        stages.with_data(c, data_dir=data, seed=0, tokenizer="tiny", init_from=""), out
    )


def online_stage(
    name: str, arg: str, workdir: str, *, init_from: str, seed: int, s: dict, **overrides
) -> str:
    """`configs/<name>.py:<arg>` from `init_from` for `s["steps"]` online steps; returns its export."""
    base = {
        "model.init_from": init_from,
        "tokenizer": "tiny",
        "seed": seed,
        "num_train_steps": s["steps"],
        "checkpoint_every_steps": s["steps"],
        "keep_checkpoints": 1,
        "checkpoint_async": False,
        "export_hf": True,
        "progress_bar": False,
        "tensorboard": False,
        "log_every_steps": max(1, s["steps"] // 20),
        "optim.learning_rate": s["lr"],
        "online.num_prompts": s["prompts"],
        "online.group_size": s["group"],
        "online.ppo_epochs": s["epochs"],
        "online.max_new_tokens": s["max_new_tokens"],
    }
    base.update(overrides)
    c = get_config(os.path.join(REPO, "configs", f"{name}.py"), arg, base)
    return stages.run_stage(c, workdir)


def evaluate(policy_hf: str, sft_hf: str, path: str, s: dict, *, seed: int) -> dict:
    """Held-out gold reward, win rate and KL against the SFT policy; sampling seed `seed` (both
    policies), so the SFT row's per-seed values carry the evaluation's sampling spread."""
    return stages.evaluate(
        policy_hf,
        sft_hf,
        tiny_tokenizer(),
        make_task(),
        path=path,
        num_prompts=s["eval_prompts"],
        samples_per_prompt=s["eval_samples"],
        max_new_tokens=s["max_new_tokens"],
        seed=seed,
    )


def beats(rows: dict, a: str, b: str, metric: str) -> bool:
    """mean(a) > mean(b) + the larger of the two standard deviations."""
    ra, rb = rows[a][metric], rows[b][metric]
    return ra["mean"] > rb["mean"] + max(ra["std"], rb["std"])


# ----------------------------------------------------------------------------- offline DPO


def offline_pairs(sft_hf: str, workdir: str, *, seed: int, s: dict) -> str:
    """`workdir/{train,test}.jsonl`: gold-labelled pairs among `group` SFT samples per prompt
    (all pairs with different gold, up to `group` per prompt; ties and empty responses left out,
    counted in `workdir/pairs.json`); returns `workdir`."""
    if os.path.isfile(os.path.join(workdir, "pairs.json")):
        return workdir
    task = make_task()
    counts = {}
    for split, name, n in (
        ("train", "train", s["steps"] * s["prompts"]),
        ("validation", "test", 32),
    ):
        prompts = task.prompts(split, n, seed)
        smp = stages.sample(
            sft_hf,
            tiny_tokenizer(),
            prompts,
            samples_per_prompt=s["group"],
            max_new_tokens=s["max_new_tokens"],
            seed=seed + 1000 * (split == "validation"),
        )
        gold = np.asarray(
            [task.gold_rewards([p] * s["group"], texts) for p, texts in zip(prompts, smp.texts)]
        )
        # an empty response (EOS first) is a row the data pipeline refuses: left out, counted
        nonempty = np.asarray([[bool(t) for t in texts] for texts in smp.texts])
        made = pairs.make_pairs(
            gold, strategy="all_pairs", seed=seed, mask=nonempty, max_pairs_per_group=s["group"]
        )
        rows = [
            {"prompt": prompts[g], "chosen": smp.texts[g][c], "rejected": smp.texts[g][r]}
            for g, c, r in zip(made.group, made.chosen, made.rejected)
        ]
        data_lib.write_jsonl(rows, os.path.join(workdir, f"{name}.jsonl"))
        counts[name] = {
            "prompts": n,
            "pairs": len(rows),
            "groups_without_pair": made.num_groups_without_pair,
            "empty_samples_left_out": int((~nonempty).sum()),
        }
        if not rows:
            raise ValueError(
                f"offline DPO pairs: all {s['group']} SFT samples tie in gold reward for each of the {n} "
                f"{split} prompts, no pair to train on; a stronger SFT policy (sft_steps) or a larger "
                "group is needed"
            )
    with open(os.path.join(workdir, "pairs.json"), "w") as f:
        json.dump(counts, f, indent=1)
    return workdir


def offline_dpo_stage(sft_hf: str, workdir: str, *, seed: int, s: dict) -> str:
    """DPO on the offline pairs: as many updates as SAIL (steps x epochs) of as many rows (prompts x group)."""
    data = offline_pairs(sft_hf, os.path.join(workdir, "data"), seed=seed, s=s)
    updates = s["steps"] * s["epochs"]
    c = get_config(
        os.path.join(REPO, "configs", "dpo.py"),
        "tiny",
        {
            "num_train_steps": updates,
            "global_batch_size": s["prompts"] * s["group"],
            "checkpoint_every_steps": updates,
            "keep_checkpoints": 1,
            "checkpoint_async": False,
            "export_hf": True,
            "progress_bar": False,
            "tensorboard": False,
            "eval_every_steps": 0,
            "log_every_steps": max(1, updates // 20),
            "optim.learning_rate": s["lr"],
            "optim.warmup_steps": 0,
            "optim.schedule": "constant",
            "data.max_prompt_len": 16,
            "data.max_len": 16 + s["max_new_tokens"],
            "task": TASK,
        },
    )
    return stages.run_stage(
        stages.with_data(c, data_dir=data, seed=seed, tokenizer="tiny", init_from=sft_hf), workdir
    )


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = common.parse_args(NAME, argv)
    t0 = time.time()
    s = settings_for(args.quick)
    sft_hf = sft_stage(args.workdir, s)
    seeds = list(range(args.seeds))
    gold = {m: [] for m in ["sft"] + s["methods"]}
    win = {m: [] for m in s["methods"]}
    tag = f"steps{s['steps']}_p{s['prompts']}_g{s['group']}_c{s['score_coef']}"
    for seed in seeds:
        for m in s["methods"]:
            wd = os.path.join(args.workdir, f"{m}_{tag}_s{seed}")
            if m == "sail":
                hf = online_stage(
                    "sail",
                    "tiny,variant=pr",
                    wd,
                    init_from=sft_hf,
                    seed=seed,
                    s=s,
                    **{
                        "online.pairs_per_group": s["group"],
                        "loss_kwargs.score_coef": s["score_coef"],
                    },
                )
            elif m == "online_dpo":
                hf = online_stage(
                    "online_dpo",
                    "tiny",
                    wd,
                    init_from=sft_hf,
                    seed=seed,
                    s=s,
                    **{"online.pairs_per_group": s["group"]},
                )
            else:
                hf = offline_dpo_stage(sft_hf, wd, seed=seed, s=s)
            ev = evaluate(hf, sft_hf, os.path.join(wd, "eval.json"), s, seed=seed)
            gold[m].append(ev["gold_reward"])
            win[m].append(ev["win_rate"])
        gold["sft"].append(
            ev["reference_gold_reward"]
        )  # the SFT policy on the same held-out prompts
    rows = [common.row("sft", seeds, gold_reward=gold["sft"])]
    rows += [
        common.row(m, seeds, gold_reward=gold[m], win_rate_vs_sft=win[m]) for m in s["methods"]
    ]
    by = {r["method"]: r for r in rows}
    supported = beats(by, "sail", "offline_dpo", "gold_reward") and beats(
        by, "sail", "offline_dpo", "win_rate_vs_sft"
    )
    fmt = lambda m, k: f"{by[m][k]['mean']:.3f} ± {by[m][k]['std']:.3f}"  # noqa: E731
    verdict = (
        f"gold reward: SFT {fmt('sft', 'gold_reward')}, "
        + ", ".join(
            f"{m} {fmt(m, 'gold_reward')} (win rate vs SFT {fmt(m, 'win_rate_vs_sft')})"
            for m in s["methods"]
        )
        + f" over {len(seeds)} seeds: "
        + (
            "SAIL beats offline DPO by more than the spread on both metrics."
            if supported
            else "SAIL does not beat offline DPO by more than the seed spread on both metrics: not supported "
            "in this miniature."
        )
        + " Against the SFT policy itself: "
        + ", ".join(
            f"{m} {'above' if beats(by, m, 'sft', 'gold_reward') else 'not above'} it by more than the spread"
            for m in s["methods"]
        )
        + "."
    )
    plots = [
        common.bar_plot(
            rows,
            "gold_reward",
            os.path.join(args.out, "gold_reward.png"),
            title="sorting: held-out gold reward",
        ),
        common.bar_plot(
            rows,
            "win_rate_vs_sft",
            os.path.join(args.out, "win_rate.png"),
            title="sorting: win rate vs the SFT policy",
        ),
    ]
    return common.write_results(
        args.out,
        name=NAME,
        paper=PAPER,
        claim=CLAIM,
        supported=supported,
        verdict=verdict,
        rows=rows,
        settings=dict(s, task=TASK, task_kwargs=TASK_KWARGS),
        quick=args.quick,
        wall_clock_s=time.time() - t0,
        plots=plots,
    )


if __name__ == "__main__":
    main()
