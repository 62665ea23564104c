"""Miniature reproduction of SEFT: "Self-Evolution Fine-Tuning for Policy Optimization"
(Chen et al., 2024).

Paper's claim: a revise-or-keep reviser, trained on ranked pairs, turns a policy's own responses
on UNLABELED prompts into better training targets, so SFT on the revised responses beats plain
SFT on the labeled data, and more unlabeled prompts help (AlpacaEval 2 / MT-Bench; no numbers
recovered).

Miniature: sorting 3-5 distinct digits (`configs/seft.py:tiny` task options), tiny character
model. Per seed: SFT on N labeled demonstrations; a reviser (init from the SFT policy, full-copy
label format) trained on the labeled prompts' ranked pairs (SFT samples ranked by gold reward,
plus `sorting.corrupt` corruptions, plus keep rows); then one round: sample on U unlabeled
prompts, revise greedily, SFT (labeled demonstrations + revised rows, filter "none") from the
SFT policy for the same number of steps for every U. U = 0 is therefore "SFT continued for the
same steps on the labeled data only": the SFT baseline at equal compute. U in {0, N, 4N}.
Metric: mean gold reward (fraction of adjacent pairs in order, 0 for a non-permutation) of
temperature-1 samples on held-out test prompts (`gold_reward`), and the fraction of those
samples that are exactly sorted (`solved`). SEFT rows also report the gold reward of
the round's drafts and of their revisions (what the reviser added).

Decision rule (written before the run): `supported` iff
  (a) mean gold_reward(SEFT, U=4N) > mean gold_reward(SFT, U=0) + the larger of their two stds, and
  (b) mean gold_reward(SEFT, U=4N) > mean gold_reward(SEFT, U=N).

    python -m experiments.reproduce.seft --out runs/reproduce/seft            # 3 seeds
    python -m experiments.reproduce.seft --quick --out /tmp/seft_quick        # smoke run (tests)

`--quick` (2 seeds, 2-step stages, N = 8) skips the reviser stage (the SFT policy stands in for
the reviser; the reviser stage is covered by tests/test_seft.py) to stay within the test budget:
its numbers mean nothing, it checks that the pipeline and the results contract hold.
"""

from __future__ import annotations

import os
import time

import numpy as np

from alignment import engine
from alignment.engine.config import get_config
from experiments.pipelines import seft, stages
from experiments.reproduce import common

PAPER = "Chen et al., 2024, Self-Evolution Fine-Tuning for Policy Optimization (SEFT)"
CLAIM = (
    "SFT on reviser-revised policy responses to unlabeled prompts beats SFT on the labeled data alone, "
    "and more unlabeled prompts help"
)


def settings(quick: bool) -> dict:
    """Everything the run depends on (also written to results.json)."""
    if quick:
        return dict(
            num_labeled=8,
            unlabeled_multiples=(0, 1, 4),
            sft_steps=2,
            reviser_steps=0,
            round_steps=2,
            rounds=1,
            batch=16,
            eval_prompts=8,
            eval_samples=1,
        )
    return dict(
        num_labeled=128,
        unlabeled_multiples=(0, 1, 4),
        sft_steps=250,
        reviser_steps=200,
        round_steps=150,
        rounds=1,
        batch=32,
        eval_prompts=128,
        eval_samples=2,
    )


def method_name(multiple: int) -> str:
    return (
        "SFT (U=0)" if multiple == 0 else "SEFT (U=N)" if multiple == 1 else f"SEFT (U={multiple}N)"
    )


def make_config(
    s: dict, seed: int, *, num_unlabeled: int, init_from: str = "", reviser_path: str = ""
):
    here = os.path.dirname(os.path.abspath(__file__))
    c = get_config(os.path.join(here, "..", "..", "configs", "seft.py"), "tiny")
    c.seed = seed  # also every stage's seed and data.seed
    c.stage.global_batch_size = s["batch"]
    c.seft.num_labeled = s["num_labeled"]
    c.seft.num_unlabeled = num_unlabeled
    c.seft.sft_steps = 0 if init_from else s["sft_steps"]
    c.init_from = init_from
    c.seft.rounds = s["rounds"]
    c.seft.round_steps = s["round_steps"]
    c.seft.num_eval_prompts = 0  # evaluated here, on more prompts
    c.reviser.steps = max(s["reviser_steps"], 1)
    c.reviser.path = reviser_path
    return c


def evaluate(policy_hf: str, task, tokenizer, s: dict) -> dict:
    """Mean gold reward and solve rate (verified fraction) of temperature-1 samples on fixed test prompts."""
    prompts = task.prompts("test", s["eval_prompts"], 0)
    k = s["eval_samples"]
    out = stages.sample(
        policy_hf,
        tokenizer,
        prompts,
        samples_per_prompt=k,
        max_new_tokens=16,
        temperature=1.0,
        seed=0,
    )
    flat_prompts = [p for p in prompts for _ in range(k)]
    gold = task.gold_rewards(flat_prompts, out.flat())
    solved = [task.verify(p, r) for p, r in zip(flat_prompts, out.flat())]
    return {"gold_reward": float(np.mean(gold)), "solved": float(np.mean(solved))}


def run_seed(s: dict, seed: int, workdir: str) -> dict:
    """{method: {metric: value}} for one seed; stage outputs under workdir/seed_<seed> are reused."""
    wd = os.path.join(workdir, f"seed_{seed}")
    base = make_config(s, seed, num_unlabeled=s["num_labeled"])
    task = seft.make_task(base)
    tokenizer = engine.make_tokenizer(base.tokenizer)
    sft_hf = seft.sft_stage(base, os.path.join(wd, "sft"))
    # reviser_steps = 0 (--quick only): the SFT policy stands in for the reviser, one stage less per seed
    reviser_hf = (
        seft.reviser_stage(base, os.path.join(wd, "reviser"), sft_hf)
        if s["reviser_steps"]
        else sft_hf
    )
    out = {"SFT start": evaluate(sft_hf, task, tokenizer, s)}
    for m in s["unlabeled_multiples"]:
        u = m * s["num_labeled"]
        c = make_config(
            s, seed, num_unlabeled=u, init_from=sft_hf, reviser_path=reviser_hf if u else ""
        )
        summ = seft.train_seft(c, os.path.join(wd, f"u{u}"))
        name = method_name(m)
        metrics = evaluate(summ["policy"], task, tokenizer, s)
        if u:
            r1 = summ["rounds"][0]
            metrics.update(
                draft_gold=r1["draft_gold"],
                revised_gold=r1["revised_gold"],
                kept_fraction=r1["kept_fraction"],
                dropped=float(r1["dropped"]),
            )
        out[name] = metrics
    return out


def decide(rows_by_name: dict, s: dict) -> tuple[bool, str]:
    """The docstring's rule: (a) SEFT at 4N beats the equal-steps SFT by more than the larger std,
    (b) SEFT at 4N beats SEFT at N."""
    sft, n1 = rows_by_name["SFT (U=0)"]["gold_reward"], rows_by_name["SEFT (U=N)"]["gold_reward"]
    top = rows_by_name[method_name(max(s["unlabeled_multiples"]))]["gold_reward"]
    margin = max(sft["std"], top["std"])
    a = top["mean"] > sft["mean"] + margin
    b = top["mean"] > n1["mean"]
    verdict = (
        f"gold reward: SFT (U=0) {sft['mean']:.3f} ± {sft['std']:.3f}, SEFT (U=N) {n1['mean']:.3f} ± "
        f"{n1['std']:.3f}, SEFT (U=4N) {top['mean']:.3f} ± {top['std']:.3f}. "
        f"(a) SEFT 4N > SFT + {margin:.3f}: {'yes' if a else 'no'}; "
        f"(b) SEFT 4N > SEFT N: {'yes' if b else 'no'}."
    )
    if not (a and b):
        verdict += " The miniature does not support the claim as stated."
    return a and b, verdict


def main(argv=None) -> dict:
    args = common.parse_args("seft", argv)
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        # every seed and every U compiles the same few shapes; a persistent cache compiles each once
        import jax

        jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir, "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    s = settings(args.quick)
    t0 = time.perf_counter()
    seeds = list(range(args.seeds))
    per_seed = [run_seed(s, seed, args.workdir) for seed in seeds]
    rows = []
    for name in per_seed[0]:
        keys = per_seed[0][name].keys()
        rows.append(common.row(name, seeds, **{k: [p[name][k] for p in per_seed] for k in keys}))
    by_name = {r["method"]: r for r in rows}
    supported, verdict = decide(by_name, s)
    plots = [
        common.bar_plot(
            rows,
            "gold_reward",
            os.path.join(args.out, "gold_reward.png"),
            title="SEFT vs SFT: held-out gold reward (T=1)",
        )
    ]
    n = s["num_labeled"]
    series = {
        "SEFT (U=0: SFT, same steps)": [
            (
                m * n,
                by_name[method_name(m)]["gold_reward"]["mean"],
                by_name[method_name(m)]["gold_reward"]["std"],
            )
            for m in s["unlabeled_multiples"]
        ]
    }
    plots.append(
        common.line_plot(
            series,
            os.path.join(args.out, "gold_vs_unlabeled.png"),
            xlabel="unlabeled prompts U",
            ylabel="gold reward (T=1)",
            title=f"SEFT, N={n} labeled prompts",
        )
    )
    return common.write_results(
        args.out,
        name="seft",
        paper=PAPER,
        claim=CLAIM,
        supported=supported,
        verdict=verdict,
        rows=rows,
        settings={**s, "argv": args.argv},
        quick=args.quick,
        wall_clock_s=time.perf_counter() - t0,
        plots=plots,
    )


if __name__ == "__main__":
    main()
