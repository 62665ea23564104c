"""Every online learner raises the gold reward of the SFT policy it starts from (issue 6's claim).

Not one paper's table: the acceptance check of the online loop (docs/methods.md section 4). Each learner
runs through its own config (`configs/<name>.py:tiny,task=sentiment`), the same as
`python -m experiments.train`, from one shared starting policy:

  SFT          the shipped tiny sentiment base SFT'd on the task's demonstrations (RSO's and the
               default experiment's SFT stage, seed 0), the starting policy and the reference;
  ppo          PPO with a value head and GAE, KL to the reference in the reward;
  grpo, rloo, dr_grpo, dapo, gspo
               configs/grpo.py's variants;
  sr_ppo       Self-Rewarding PPO: reward sum log pi_sft - log pi_base at EOS, pi_base the
               shipped pretrained base (the paper's pair: a pretrained model and its SFT);
  online_dpo   DPO on all gold-labelled pairs of each group of current-policy samples;
  sail         SAIL-PR: the same pairs, DPO plus the authors' normalised extra term.
(`sr_ppo_token_mean`, the length-normalised self-reward, is run by `experiments.reproduce.sr_ppo`.)
The reward of every learner but sr_ppo is the task's gold scorer (VADER compound sentiment of the
response, in [-1, 1]); sr_ppo never sees it. Per seed, `steps` online steps of `prompts` prompts x
`group` samples at learning rate `lr`, then `stages.evaluate` on held-out (test split) prompts
against the SFT policy with sampling seed = the run's seed (the SFT row is the SFT policy on the
same prompts and seeds).

Decision rule (`supported`): every learner's gold reward is above the SFT policy's on every seed,
and its mean is above the SFT mean by more than the larger of the two standard deviations.

    python -m experiments.reproduce.online_gains --out runs/reproduce/online_gains [--quick] [--seeds N]
"""

from __future__ import annotations

import os
import time

from alignment import tasks
from alignment.tokenizer import Tokenizer
from experiments.pipelines import stages
from experiments.reproduce import common, rso
from experiments.reproduce import sail as shared

NAME = "online_gains"
PAPER = (
    "issue 6: the online loop (PPO, GRPO and variants, Self-Rewarding PPO, online DPO, SAIL; "
    "docs/methods.md section 4)"
)
CLAIM = (
    "Each online learner, run through its config in a short CPU run, raises the held-out gold reward of the "
    "SFT policy it starts from."
)
TASK = "sentiment"
# method -> (config file, arg string, overrides); the group-sampling learners share configs/grpo.py
METHODS = {
    "ppo": ("ppo", "tiny,task=sentiment", {}),
    "grpo": ("grpo", "tiny,task=sentiment,variant=grpo", {}),
    "rloo": ("grpo", "tiny,task=sentiment,variant=rloo", {}),
    "dr_grpo": ("grpo", "tiny,task=sentiment,variant=dr_grpo", {}),
    "dapo": ("grpo", "tiny,task=sentiment,variant=dapo", {}),
    "gspo": ("grpo", "tiny,task=sentiment,variant=gspo", {}),
    "sr_ppo": ("sr_ppo", "tiny,task=sentiment", {"online.log_ratio_reward": "sum"}),
    "online_dpo": ("online_dpo", "tiny,task=sentiment", {}),
    "sail": ("sail", "tiny,task=sentiment,variant=pr", {}),
    # not in this check's table: the sr_ppo reproduction's second reward form
    "sr_ppo_token_mean": (
        "sr_ppo",
        "tiny,task=sentiment",
        {"online.log_ratio_reward": "token_mean"},
    ),
}
PAIRWISE = ("online_dpo", "sail")


def settings_for(quick: bool) -> dict:
    """Every knob of the run (recorded in results.json)."""
    if quick:
        return dict(
            sft=rso.settings_for(True)["sft"],
            steps=1,
            prompts=4,
            group=4,
            epochs=1,
            lr=1e-4,
            max_prompt_len=24,
            max_new_tokens=8,
            eval_prompts=4,
            eval_samples=2,
            methods=["sr_ppo"],
        )  # the PPO path with a second frozen model; sr_ppo --quick reuses it
    return dict(
        sft=rso.settings_for(False)["sft"],
        steps=30,
        prompts=8,
        group=8,
        epochs=2,
        lr=1e-4,
        max_prompt_len=24,
        max_new_tokens=24,
        eval_prompts=128,
        eval_samples=4,
        methods=[m for m in METHODS if m != "sr_ppo_token_mean"],
    )


def overrides(method: str, *, sft_hf: str, base: str, s: dict) -> dict:
    """What the run changes in `configs/<file>.py:<arg>` beyond `shared.online_stage`'s settings."""
    out = {"tokenizer": sft_hf, "online.max_prompt_len": s["max_prompt_len"], **METHODS[method][2]}
    if METHODS[method][0] == "sr_ppo":
        out["reward.base_path"] = base
    if method in PAIRWISE:
        out["online.pairs_per_group"] = s[
            "group"
        ]  # all pairs with different gold, up to one per sample
    return out


def starting_policy(workdir: str, s: dict) -> tuple[str, str]:
    """(the shipped sentiment base, its SFT policy under `workdir/sft`): RSO's SFT stage, seed 0."""
    base = rso.base_policy()
    return base, rso.sft(base, workdir, 0, {"task": TASK, "sft": s["sft"]})


def run_method(method: str, seed: int, *, workdir: str, base: str, sft_hf: str, s: dict) -> dict:
    """`METHODS[method]` from `sft_hf` for `s["steps"]` online steps (reused when exported), then its
    held-out evaluation against the SFT policy (cached): `stages.evaluate`'s dict."""
    tag = f"steps{s['steps']}_p{s['prompts']}_g{s['group']}_lr{s['lr']:g}"
    wd = os.path.join(workdir, f"{method}_{tag}_s{seed}")
    name, arg, _ = METHODS[method]
    hf = shared.online_stage(
        name,
        arg,
        wd,
        init_from=sft_hf,
        seed=seed,
        s=s,
        **overrides(method, sft_hf=sft_hf, base=base, s=s),
    )
    return stages.evaluate(
        hf,
        sft_hf,
        Tokenizer.from_pretrained(sft_hf),
        tasks.get_task(TASK),
        path=os.path.join(wd, "eval.json"),
        num_prompts=s["eval_prompts"],
        samples_per_prompt=s["eval_samples"],
        max_new_tokens=s["max_new_tokens"],
        seed=seed,
    )


def improves(by: dict, method: str) -> bool:
    """Above SFT on every seed, and on average by more than the spread."""
    m, ref = by[method]["gold_reward"], by["sft"]["gold_reward"]
    return all(a > b for a, b in zip(m["values"], ref["values"])) and shared.beats(
        by, method, "sft", "gold_reward"
    )


def table(workdir: str, seeds: list[int], s: dict) -> tuple[list[dict], dict]:
    """Every `s["methods"]` learner for every seed (`run_method`): rows of per-seed gold reward, win
    rate, KL and response length against the SFT policy, which is the first row (its gold on the
    same held-out prompts and sampling seeds); and the starting policy's paths."""
    base, sft_hf = starting_policy(workdir, s)
    metrics = {
        m: {"gold_reward": [], "win_rate_vs_sft": [], "kl_vs_sft": [], "response_length": []}
        for m in s["methods"]
    }
    sft_gold = []
    for seed in seeds:
        for m in s["methods"]:
            ev = run_method(m, seed, workdir=workdir, base=base, sft_hf=sft_hf, s=s)
            for k, v in (
                ("gold_reward", ev["gold_reward"]),
                ("win_rate_vs_sft", ev["win_rate"]),
                ("kl_vs_sft", ev["kl"]),
                ("response_length", ev["response_length"]),
            ):
                metrics[m][k].append(v)
        sft_gold.append(ev["reference_gold_reward"])
    rows = [common.row("sft", seeds, gold_reward=sft_gold)]
    rows += [common.row(m, seeds, **metrics[m]) for m in s["methods"]]
    return rows, {"base": base, "sft_policy": sft_hf}


def main(argv=None) -> dict:
    args = common.parse_args(NAME, argv)
    t0 = time.time()
    s = settings_for(args.quick)
    seeds = list(range(args.seeds))
    rows, policies = table(args.workdir, seeds, s)
    by = {r["method"]: r for r in rows}
    up = {m: improves(by, m) for m in s["methods"]}
    supported = all(up.values())
    fmt = lambda m, k: f"{by[m][k]['mean']:.3f} ± {by[m][k]['std']:.3f}"  # noqa: E731
    verdict = (
        f"held-out gold reward over {len(seeds)} seeds: SFT {fmt('sft', 'gold_reward')}; "
        + "; ".join(
            f"{m} {fmt(m, 'gold_reward')} (KL {by[m]['kl_vs_sft']['mean']:.1f}, "
            f"{'raised' if up[m] else 'NOT raised'})"
            for m in s["methods"]
        )
        + (
            ". Every learner raises its starting policy's gold reward on every seed, beyond the spread."
            if supported
            else ". Not every learner raises its starting policy's gold reward beyond the "
            "spread on every seed: not supported."
        )
    )
    plots = [
        common.bar_plot(
            rows,
            "gold_reward",
            os.path.join(args.out, "gold_reward.png"),
            title=f"sentiment: held-out gold reward (VADER) after {s['steps']} online steps",
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
        settings=dict(s, task=TASK, **policies),
        quick=args.quick,
        wall_clock_s=time.time() - t0,
        plots=plots,
    )


if __name__ == "__main__":
    main()
