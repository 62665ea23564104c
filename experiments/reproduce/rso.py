"""RSO vs DPO vs SLiC on gold win rate against the SFT policy, with a beta sweep of RSO.

Paper: Liu et al., 2023, "Statistical Rejection Sampling Improves Preference Optimization" (RSO).

Claim: fitting preferences on pairs drawn (by statistical rejection sampling from the SFT policy)
from the estimated optimal policy `pi_r ∝ pi_sft exp(r / beta)` beats fitting them on pairs of
plain SFT samples, with either loss: RSO > DPO (sigmoid-norm) and RSO > SLiC (hinge-norm) on
win rate against the SFT policy (TL;DR: 71.9 vs 67.7 vs 67.3); an intermediate beta is best
(beta -> 0 is best-of-N, beta -> inf plain SFT sampling).

Miniature, per seed s (shared by every method: the SFT policy, the proxy, the prompts, the
number of pairs and of training steps, the learning rate and the loss gamma):
  1. SFT: the shipped tiny sentiment base (`configs/default.py`'s pretrain) fine-tuned on the
     `sentiment` task's demonstrations (`stages.sft_policy`, the default experiment's settings).
  2. Proxy: a Bradley-Terry reward model (`configs/reward_model.py`, initialised from the SFT
     policy with a fresh score head) trained on grammar continuation pairs whose labels are
     *noisy* draws from the gold scorer, P(a > b) = sigmoid((vader_a - vader_b) / T) with
     T = `rm.label_temperature` (`data.task_source.label_temperature`): the noisy raters of the
     paper's human data. Its held-out accuracy against gold labels is reported. Gold (VADER) is
     only used to evaluate.
  3. Methods, each `configs/rso.py` (kind `rso`: sample -> proxy score -> [rejection sample] ->
     random pairing of M samples into M/2 pairs per prompt -> labelled by the proxy -> loss
     against the SFT policy), `gen.num_prompts` train prompts, M = `gen.num_accepted`:
       DPO        `sampler=sft`: M plain SFT samples per prompt, loss `dpo` (the paper's
                  sigmoid-norm; RSO's baselines "sft-sample-rank"). The paper's DPO row trains on
                  the human pairs directly; here the policy-sample pairs keep the pair count and
                  the proxy labels identical across methods (deviation, stated).
       SLiC       `sampler=sft`, loss `hinge` (the paper's hinge-norm SLiC baseline; the
                  library's reference-free `slic` loss is SLiC-HF's calibration form, not RSO's).
       RSO        `sampler=rso`: N = `gen.num_samples` candidates, M accepted by Algorithm 1
                  at `beta` = `headline_beta` (fixed before running: the paper's 0.5), loss `dpo`.
       RSO-hinge  the same pairs as RSO, loss `hinge` (the match of SLiC).
       RSO b=x    the beta sweep of RSO (loss `dpo`) over `betas`; rewards are the proxy's
                  logits, whose spread over SFT samples (`proxy_std`) is reported.
  4. Evaluation: `stages.evaluate` of every policy against the SFT policy on held-out prompts
     (gold win rate = P(vader(y_pi) > vader(y_sft)) + ties/2, gold reward, KL).

Decision rule (`supported`), means and stds over seeds of the gold win rate vs SFT:
  (a) RSO > DPO + the larger of their stds, and RSO-hinge > SLiC + the larger of their stds;
  (b) over the sweep (betas, plus DPO as beta = inf), the best mean is at neither end.
Both must hold. `--quick` (a smoke test: 2 seeds, a few steps, one beta) runs no hinge pair and
cannot be supported (a one-beta sweep has no interior).

    python -m experiments.reproduce.rso --out runs/reproduce/rso [--quick] [--seeds N]
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np

from alignment import metrics as metrics_lib
from alignment import pretrain, tasks
from alignment.engine.config import get_config
from alignment.tokenizer import Tokenizer
from experiments.pipelines import stages
from experiments.reproduce import common

NAME = "rso"
PAPER = "Liu et al., 2023, Statistical Rejection Sampling Improves Preference Optimization (RSO)"
CLAIM = (
    "Preference pairs from statistical rejection sampling of pi_r ∝ pi_sft exp(r/beta) beat pairs of plain SFT "
    "samples: RSO > DPO and RSO > SLiC on gold win rate against the SFT policy, and an intermediate beta is best."
)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def settings_for(quick: bool) -> dict:
    """Every knob of the run (recorded in results.json)."""
    return {
        "task": "sentiment",
        "sft": {
            "steps": 3 if quick else 60,
            "num_prompts": 64 if quick else 2048,
            "batch": 16 if quick else 64,
            "lr": 1e-3,
            "max_prompt_len": 24,
            "max_len": 48,
        },
        "rm": {
            "steps": 3 if quick else 60,
            "batch": 16,
            "lr": 1e-3,
            "warmup": 1 if quick else 6,
            "label_temperature": 0.5,
            "num_examples": 64 if quick else 1024,
            "num_eval": 16 if quick else 128,
        },
        "gen": {
            "num_prompts": 8 if quick else 48,
            "num_samples": 6 if quick else 16,
            "num_accepted": 4 if quick else 8,
            "temperature": 0.7,
            "top_k": 40,
            "max_new_tokens": 24,
        },
        "train": {
            "steps": 3 if quick else 30,
            "batch": 8 if quick else 32,
            "lr": 3e-4,
            "warmup": 1 if quick else 6,
            "gamma": 0.05,
        },
        "headline_beta": 0.5,
        "betas": [0.5] if quick else [0.1, 0.5, 2.5],
        # the hinge-norm pair (SLiC, RSO-hinge) only in the full run: --quick is a smoke test of the
        # pipeline and its CPU budget (the hinge path of the RSO pipeline has its own tests)
        "hinge": not quick,
        "eval": {
            "num_prompts": 4 if quick else 32,
            "samples_per_prompt": 2 if quick else 4,
            "max_new_tokens": 24,
            "temperature": 1.0,
            "seed": 0,
            "split": "test",
        },
    }


def methods_for(s: dict) -> list[tuple[str, str, str, float]]:
    """(row name, sampler, loss, beta) of every run; the sweep's headline beta is the RSO row."""
    b0 = s["headline_beta"]
    out = [("DPO", "sft", "dpo", b0), ("RSO", "rso", "dpo", b0)]
    if s["hinge"]:
        out = [out[0], ("SLiC", "sft", "hinge", b0), out[1], ("RSO-hinge", "rso", "hinge", b0)]
    return out + [(f"RSO b={b:g}", "rso", "dpo", b) for b in s["betas"] if b != b0]


# ----------------------------------------------------------------------------- stages


def base_policy() -> str:
    """The shipped tiny sentiment base (the default experiment's `pretrain` config)."""
    cfg = get_config(os.path.join(REPO, "configs", "default.py"))
    return str(pretrain.build_base(cfg.pretrain))


def sft(base: str, workdir: str, seed: int, s: dict) -> str:
    c = s["sft"]
    return stages.sft_policy(
        s["task"],
        os.path.join(workdir, "sft"),
        steps=c["steps"],
        num_prompts=c["num_prompts"],
        seed=seed,
        tokenizer=base,
        init_from=base,
        lr=c["lr"],
        batch=c["batch"],
        max_prompt_len=c["max_prompt_len"],
        max_len=c["max_len"],
    )


def _quiet(c, steps: int) -> None:
    c.num_train_steps = steps
    c.checkpoint_every_steps = steps
    c.keep_checkpoints = 1
    c.checkpoint_async = False
    c.log_every_steps = max(1, steps // 10)
    c.tensorboard = False
    c.progress_bar = False
    c.model.logprob_chunk_size = 64


def reward_model_config(base: str, sft_hf: str, seed: int, s: dict):
    """`configs/reward_model.py:tiny` on noisy gold-labelled sentiment pairs, from the SFT policy."""
    r = s["rm"]
    c = get_config(
        os.path.join(REPO, "configs", "reward_model.py"),
        f"tiny,task={s['task']},label_temperature={r['label_temperature']}",
    )
    _quiet(c, r["steps"])
    c.seed = seed
    c.tokenizer = base
    c.model.init_from = sft_hf
    c.global_batch_size = r["batch"]
    c.eval_every_steps = r["steps"]
    c.eval_batches = max(1, r["num_eval"] // r["batch"])
    c.optim.learning_rate = r["lr"]
    c.optim.warmup_steps = r["warmup"]
    c.data.seed = seed
    c.data.max_prompt_len = s["sft"]["max_prompt_len"]
    c.data.max_len = s["sft"]["max_len"]
    t = c.data.task_source
    t.seed, t.num_examples, t.num_eval_examples = seed, r["num_examples"], r["num_eval"]
    return c


def method_config(
    sampler: str, loss: str, beta: float, *, base: str, sft_hf: str, rm_hf: str, seed: int, s: dict
):
    """`configs/rso.py` for one method: same prompts, pair count, proxy and training for all."""
    g, t = s["gen"], s["train"]
    c = get_config(
        os.path.join(REPO, "configs", "rso.py"),
        f"task={s['task']},loss={loss},sampler={sampler},pairing=random,beta={beta}",
    )
    _quiet(c.preference, t["steps"])
    c.seed = seed  # also the stages' seed and data.seed
    c.tokenizer = base
    c.init_from = sft_hf
    p = c.preference
    p.global_batch_size = t["batch"]
    p.eval_every_steps = 0
    p.optim.learning_rate = t["lr"]
    p.optim.warmup_steps = t["warmup"]
    p.optim.weight_decay = 0.0
    p.loss_kwargs.beta = t["gamma"]
    p.data.max_prompt_len = s["sft"]["max_prompt_len"]
    p.data.max_len = s["sft"]["max_len"]
    c.reward.kind = "reward_model"
    c.reward.path = rm_hf
    r = c.rso
    # no held-out pairs (the engine's eval is off, eval_every_steps=0): the pipeline writes no test split
    r.num_prompts, r.num_eval_prompts = g["num_prompts"], 0
    r.num_samples, r.num_accepted = g["num_samples"], g["num_accepted"]
    r.temperature, r.top_k, r.max_new_tokens = g["temperature"], g["top_k"], g["max_new_tokens"]
    r.sft_steps = 0
    return c


def proxy_spread(workdir: str) -> dict:
    """Proxy statistics of a run's generation (`rso.json`): its reward of all / accepted samples."""
    with open(os.path.join(workdir, "rso.json")) as f:
        tr = json.load(f)["train"]
    return {
        k: tr[k]
        for k in (
            "reward_mean_all",
            "reward_mean_accepted",
            "gold_mean_all",
            "gold_mean_accepted",
            "pairs_written",
            "first_round_acceptance_rate",
        )
        if k in tr
    }


def rm_accuracy(workdir: str) -> float:
    """Held-out accuracy of the reward model against gold labels (its last eval)."""
    lines = [
        r
        for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
        if "eval_accuracy" in r
    ]
    if not lines:
        raise ValueError(
            f"{workdir}/metrics.jsonl has no eval_accuracy: the reward model was not evaluated"
        )
    return float(lines[-1]["eval_accuracy"])


def proxy_std(run_dir: str) -> float:
    """Std of the proxy over the SFT samples of a `sampler=sft` run (all M samples of a prompt are
    paired, so its pairs hold them all): the scale that RSO's beta is measured in."""
    with open(os.path.join(run_dir, "rso_data", "train.jsonl")) as f:
        rows = [json.loads(x) for x in f if x.strip()]
    return float(np.std([r[k] for r in rows for k in ("chosen_reward", "rejected_reward")]))


def run_seed(seed: int, base: str, workdir: str, s: dict) -> dict:
    task = tasks.get_task(s["task"])
    tokenizer = Tokenizer.from_pretrained(base)
    sft_hf = sft(base, workdir, seed, s)
    rm_dir = os.path.join(workdir, "rm")
    rm_hf = stages.run_stage(reward_model_config(base, sft_hf, seed, s), rm_dir)
    out = {"rm_accuracy": rm_accuracy(rm_dir), "methods": {}}
    e = s["eval"]
    for name, sampler, loss, beta in methods_for(s):
        key = f"{sampler}_{loss}" + (f"_b{beta:g}" if sampler == "rso" else "")
        run_dir = os.path.join(workdir, key)
        hf = stages.run_stage(
            method_config(
                sampler, loss, beta, base=base, sft_hf=sft_hf, rm_hf=rm_hf, seed=seed, s=s
            ),
            run_dir,
        )
        ev = stages.evaluate(
            hf,
            sft_hf,
            tokenizer,
            task,
            path=os.path.join(workdir, f"eval_{key}.json"),
            num_prompts=e["num_prompts"],
            samples_per_prompt=e["samples_per_prompt"],
            max_new_tokens=e["max_new_tokens"],
            temperature=e["temperature"],
            seed=e["seed"],
            split=e["split"],
        )
        out["methods"][name] = {"eval": ev, "generation": proxy_spread(run_dir)}
        if name == "DPO":
            out["proxy_std"] = proxy_std(run_dir)
    return out


# ----------------------------------------------------------------------------- decision


def best_is_interior(sweep: list[tuple[float, float]]) -> bool:
    """True when the largest mean of the (beta, mean) points (beta = inf allowed) is at neither
    end of the beta range; ties count for the ends."""
    pts = sorted(sweep)
    if len(pts) < 3:
        return False
    means = [m for _, m in pts]
    top = max(means)
    return means[0] < top and means[-1] < top


def decide(rows: dict, sweep: list[tuple[float, float]]) -> tuple[bool, str]:
    """The docstring's rule: `rows` maps method -> `common.stats` of its gold win rate (a run
    without the hinge pair is judged on RSO vs DPO and the sweep)."""
    parts, ok = [], True
    for a, b in (("RSO", "DPO"), ("RSO-hinge", "SLiC")):
        if a not in rows and b not in rows:
            continue
        ra, rb = rows[a], rows[b]
        gap = ra["mean"] - rb["mean"]
        spread = max(ra["std"], rb["std"])
        good = gap > spread
        ok &= good
        parts.append(
            f"{a} {ra['mean']:.3f} ± {ra['std']:.3f} vs {b} {rb['mean']:.3f} ± {rb['std']:.3f} "
            f"({'beats' if good else 'does not beat'} it by more than the larger std)"
        )
    interior = best_is_interior(sweep)
    ok &= interior
    best = max(sweep, key=lambda p: p[1])
    parts.append(
        f"best beta of the sweep {best[0]:g} (win rate {best[1]:.3f}) "
        f"{'is intermediate' if interior else 'is at an end of the range'}"
    )
    return ok, ("Supported: " if ok else "Not supported: ") + "; ".join(parts) + "."


def main(argv=None) -> dict:
    args = common.parse_args(NAME, argv)
    t0 = time.perf_counter()
    s = settings_for(args.quick)
    seeds = list(range(args.seeds))
    base = base_policy()
    s["base"] = base
    per_seed = {
        seed: run_seed(seed, base, os.path.join(args.workdir, f"seed{seed}"), s) for seed in seeds
    }

    rows = []
    for name, sampler, loss, beta in methods_for(s):
        m = [per_seed[seed]["methods"][name] for seed in seeds]
        rows.append(
            common.row(
                name,
                seeds,
                win_rate_vs_sft=[x["eval"]["win_rate"] for x in m],
                gold_reward=[x["eval"]["gold_reward"] for x in m],
                kl_vs_sft=[x["eval"]["kl"] for x in m],
                pair_gold=[x["generation"]["gold_mean_accepted"] for x in m],
                pair_proxy=[x["generation"]["reward_mean_accepted"] for x in m],
            )
        )
    sft_gold = [per_seed[seed]["methods"]["DPO"]["eval"]["reference_gold_reward"] for seed in seeds]
    rows.insert(
        0,
        common.row(
            "SFT",
            seeds,
            gold_reward=sft_gold,
            rm_gold_accuracy=[per_seed[x]["rm_accuracy"] for x in seeds],
            proxy_std=[per_seed[x]["proxy_std"] for x in seeds],
        ),
    )
    by_name = {r["method"]: r for r in rows}
    win = {r["method"]: r["win_rate_vs_sft"] for r in rows if "win_rate_vs_sft" in r}
    sweep_rows = {b: ("RSO" if b == s["headline_beta"] else f"RSO b={b:g}") for b in s["betas"]}
    sweep = [(b, win[n]["mean"]) for b, n in sweep_rows.items()] + [(math.inf, win["DPO"]["mean"])]
    supported, verdict = decide(win, sweep)
    verdict += (
        f" Proxy: held-out agreement with gold {by_name['SFT']['rm_gold_accuracy']['mean']:.3f}, "
        f"std over SFT samples {by_name['SFT']['proxy_std']['mean']:.2f}."
    )

    lo, hi = min(s["betas"]), max(s["betas"])
    series = {
        "RSO (sigmoid-norm)": [(b, win[n]["mean"], win[n]["std"]) for b, n in sweep_rows.items()],
        "DPO (= beta inf)": [
            (lo, win["DPO"]["mean"], win["DPO"]["std"]),
            (hi, win["DPO"]["mean"], win["DPO"]["std"]),
        ],
    }
    curve = common.line_plot(
        series,
        os.path.join(args.out, "win_rate_vs_beta.png"),
        xlabel="RSO beta",
        ylabel="gold win rate vs SFT",
        logx=True,
        title=f"RSO beta sweep ({len(seeds)} seeds, mean ± std)",
    )
    bars = common.bar_plot(
        [r for r in rows if "win_rate_vs_sft" in r],
        "win_rate_vs_sft",
        os.path.join(args.out, "win_rate.png"),
        title="gold (VADER) win rate vs SFT",
    )
    s["seeds"] = seeds
    s["methods"] = [list(m) for m in methods_for(s)]
    return common.write_results(
        args.out,
        name=NAME,
        paper=PAPER,
        claim=CLAIM,
        supported=supported,
        verdict=verdict,
        rows=rows,
        settings=s,
        quick=args.quick,
        wall_clock_s=time.perf_counter() - t0,
        plots=[curve, bars],
    )


if __name__ == "__main__":
    main()
