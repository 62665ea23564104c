"""Self-Rewarding PPO vs the SFT policy it starts from.

Paper: Self-Rewarding PPO, aligning language models with demonstrations only (methods.md
section 4): after SFT, run PPO with the reward `log pi_sft(y|x) - log pi_base(y|x)` (summed over
the response, given at EOS), optionally with a KL penalty to pi_sft.

Claim: SR-PPO improves over the SFT policy it starts from, with no reward model and no
preference data (~2-4 points on Mistral-7B / Llama-3-8B benchmarks in the paper).

Miniature: the sorting task of `experiments.reproduce.sail` (3-4 numbers in 0..9, gold reward =
fraction of adjacent pairs in order) and its shared SFT policy (`sft_steps` SFT steps of a fresh
tiny model, seed 0). pi_base is a real earlier model of the same training: the same fresh
model SFT'd for only `base_steps` steps (seed 0). Per seed, configs/sr_ppo.py:tiny from pi_sft
for `steps` online steps of `prompts` prompts x `group` samples, PPO with GAE and the KL penalty
`kl_coef` to pi_sft, in two reward forms:
  sr_ppo             the paper's summed log-ratio (`online.log_ratio_reward="sum"`);
  sr_ppo_token_mean  the log-ratio divided by the response length ("token_mean"), which removes
                     the sum's dependence on length.
Each policy and the SFT policy are evaluated by `stages.evaluate` on held-out (test split)
prompts, sampling seed = the run's seed: gold reward and win rate against the SFT policy.

Decision rule (`supported`): the paper's form (sr_ppo) has mean gold reward > the SFT policy's
mean + the larger of their two standard deviations.

    python -m experiments.reproduce.sr_ppo --out runs/reproduce/sr_ppo [--quick] [--seeds N]
"""

from __future__ import annotations

import os
import time

from experiments.reproduce import common
from experiments.reproduce import sail as shared

NAME = "sr_ppo"
PAPER = "Self-Rewarding PPO: aligning language models with demonstrations only (methods.md section 4)"
CLAIM = ("PPO with the self-reward log pi_sft(y|x) - log pi_base(y|x) at EOS improves the gold reward of the SFT "
         "policy it starts from (~2-4 points in the paper), using demonstrations only.")
FORMS = {"sr_ppo": "sum", "sr_ppo_token_mean": "token_mean"}


def settings_for(quick: bool) -> dict:
    """Every knob of the run (recorded in results.json)."""
    if quick:
        return dict(sft_steps=80, sft_prompts=512, base_steps=10, steps=2, prompts=8, group=8, epochs=1, lr=3e-5,
                    kl_coef=0.05, eval_prompts=8, eval_samples=2, max_new_tokens=12, forms=["sr_ppo"])
    return dict(sft_steps=300, sft_prompts=2048, base_steps=30, steps=30, prompts=8, group=8, epochs=2, lr=3e-5,
                kl_coef=0.05, eval_prompts=64, eval_samples=4, max_new_tokens=12, forms=list(FORMS))


def main(argv=None) -> dict:
    args = common.parse_args(NAME, argv)
    t0 = time.time()
    s = settings_for(args.quick)
    sft_hf = shared.sft_stage(args.workdir, s)
    base_hf = shared.sft_stage(args.workdir, dict(s, sft_steps=s["base_steps"]))
    seeds = list(range(args.seeds))
    gold = {m: [] for m in ["sft"] + s["forms"]}
    win = {m: [] for m in s["forms"]}
    tag = f"steps{s['steps']}_p{s['prompts']}_g{s['group']}_base{s['base_steps']}"
    for seed in seeds:
        for m in s["forms"]:
            wd = os.path.join(args.workdir, f"{m}_{tag}_s{seed}")
            hf = shared.online_stage("sr_ppo", "tiny", wd, init_from=sft_hf, seed=seed, s=s,
                                     **{"reward.base_path": base_hf, "online.log_ratio_reward": FORMS[m],
                                        "online.kl_coef": s["kl_coef"]})
            ev = shared.evaluate(hf, sft_hf, os.path.join(wd, "eval.json"), s, seed=seed)
            gold[m].append(ev["gold_reward"])
            win[m].append(ev["win_rate"])
        gold["sft"].append(ev["reference_gold_reward"])
    rows = [common.row("sft", seeds, gold_reward=gold["sft"])]
    rows += [common.row(m, seeds, gold_reward=gold[m], win_rate_vs_sft=win[m]) for m in s["forms"]]
    by = {r["method"]: r for r in rows}
    supported = shared.beats(by, "sr_ppo", "sft", "gold_reward")
    fmt = lambda m, k: f"{by[m][k]['mean']:.3f} ± {by[m][k]['std']:.3f}"  # noqa: E731
    verdict = (f"gold reward: SFT {fmt('sft', 'gold_reward')}, "
               + ", ".join(f"{m} {fmt(m, 'gold_reward')} (win rate vs SFT {fmt(m, 'win_rate_vs_sft')})"
                           for m in s["forms"])
               + f" over {len(seeds)} seeds: "
               + ("SR-PPO (the paper's summed reward) improves on the SFT policy by more than the spread."
                  if supported else "SR-PPO (the paper's summed reward) does not beat the SFT policy by more than "
                  "the seed spread: not supported in this miniature."))
    plots = [common.bar_plot(rows, "gold_reward", os.path.join(args.out, "gold_reward.png"),
                             title="sorting: held-out gold reward")]
    return common.write_results(args.out, name=NAME, paper=PAPER, claim=CLAIM, supported=supported, verdict=verdict,
                                rows=rows, settings=dict(s, task=shared.TASK, task_kwargs=shared.TASK_KWARGS),
                                quick=args.quick, wall_clock_s=time.time() - t0, plots=plots)


if __name__ == "__main__":
    main()
