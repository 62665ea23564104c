"""Self-Rewarding PPO vs the SFT policy it starts from.

Paper: Self-Rewarding PPO, aligning language models with demonstrations only (docs/methods.md
section 4): after SFT, run PPO with the reward `log pi_sft(y|x) - log pi_base(y|x)` (summed over
the response, given at EOS), optionally with a KL penalty to pi_sft.

Claim: SR-PPO improves over the SFT policy it starts from, with no reward model and no
preference data (~2-4 points on Mistral-7B / Llama-3-8B benchmarks in the paper).

Miniature: the paper's pair of models at tiny scale, in the setting of
`experiments.reproduce.online_gains`: pi_base is the shipped tiny sentiment base (pretrained
in-repo on the task's text), pi_sft that base SFT'd on the sentiment task's demonstrations
(seed 0; RSO's and the default experiment's SFT stage). Per seed, configs/sr_ppo.py:tiny from
pi_sft for `steps` online steps of `prompts` prompts x `group` samples, PPO with GAE and the
config's KL penalty 0.05 to pi_sft, in two reward forms:
  sr_ppo             the paper's summed log-ratio (`online.log_ratio_reward="sum"`);
  sr_ppo_token_mean  the log-ratio divided by the response length ("token_mean"), which removes
                     the sum's dependence on length.
The learner never sees the gold reward (VADER compound sentiment, in [-1, 1]); each policy and
the SFT policy are evaluated by `stages.evaluate` on held-out (test split) prompts, sampling
seed = the run's seed: gold reward, win rate and KL against the SFT policy.

Decision rule (`supported`): the paper's form (sr_ppo) has a higher gold reward than the SFT
policy on every seed, and a mean above the SFT mean by more than the larger of the two standard
deviations (`online_gains.improves`).

(Before this setting the miniature ran on sorting with pi_base = the same fresh model SFT'd for
fewer steps; there SR-PPO stayed at its SFT policy's gold, 0.50: a 30-step SFT model is not a
pretrained base, and the log-ratio of two SFT models of one task carries little signal.)

    python -m experiments.reproduce.sr_ppo --out runs/reproduce/sr_ppo [--quick] [--seeds N]
"""

from __future__ import annotations

import time

from experiments.reproduce import common, online_gains

NAME = "sr_ppo"
PAPER = "Self-Rewarding PPO: aligning language models with demonstrations only (docs/methods.md section 4)"
CLAIM = (
    "PPO with the self-reward log pi_sft(y|x) - log pi_base(y|x) at EOS improves the gold reward of the SFT "
    "policy it starts from (~2-4 points in the paper), using demonstrations only."
)
FORMS = ("sr_ppo", "sr_ppo_token_mean")


def settings_for(quick: bool) -> dict:
    """Every knob of the run (recorded in results.json): online_gains' settings, SR-PPO forms only."""
    s = online_gains.settings_for(quick)
    s["methods"] = ["sr_ppo"] if quick else list(FORMS)
    return s


def main(argv=None) -> dict:
    args = common.parse_args(NAME, argv)
    t0 = time.time()
    s = settings_for(args.quick)
    rows, policies = online_gains.table(args.workdir, list(range(args.seeds)), s)
    by = {r["method"]: r for r in rows}
    supported = online_gains.improves(by, "sr_ppo")
    fmt = lambda m, k: f"{by[m][k]['mean']:.3f} ± {by[m][k]['std']:.3f}"  # noqa: E731
    verdict = (
        f"gold reward: SFT {fmt('sft', 'gold_reward')}, "
        + ", ".join(
            f"{m} {fmt(m, 'gold_reward')} (win rate vs SFT {fmt(m, 'win_rate_vs_sft')}, "
            f"KL {by[m]['kl_vs_sft']['mean']:.1f})"
            for m in s["methods"]
        )
        + f" over {args.seeds} seeds: "
        + (
            "SR-PPO (the paper's summed reward) beats the SFT policy on every seed, by more than the spread."
            if supported
            else "SR-PPO (the paper's summed reward) does not beat the SFT policy on every seed "
            "by more than the spread: not supported in this miniature."
        )
    )
    plots = [
        common.bar_plot(
            rows,
            "gold_reward",
            f"{args.out}/gold_reward.png",
            title="sentiment: held-out gold reward (VADER)",
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
        settings=dict(s, task=online_gains.TASK, **policies),
        quick=args.quick,
        wall_clock_s=time.time() - t0,
        plots=plots,
    )


if __name__ == "__main__":
    main()
