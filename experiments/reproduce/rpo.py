"""RPO vs DPO under an exploitable proxy reward: DPO's chosen likelihood falls, RPO holds it.

Papers: Liu et al., 2024, "Provably Mitigating Overoptimization in RLHF: Your SFT Loss is
Implicitly an Adversarial Regularizer" (RPO = DPO + an SFT term on the chosen response; the
library's `rpo` loss cites it) and Pang et al., 2024, "Iterative Reasoning Preference
Optimization" (the same objective with a length-normalised NLL, our `variant="average"`).

Claim: trained on pairs labelled by an imperfect proxy, DPO lowers the likelihood of the
*chosen* responses as well as the rejected ones (it only needs the margin to grow), drifting
toward what the proxy over-rewards; adding the NLL of the chosen response (RPO) keeps the chosen
likelihood up (Pang et al., Fig. 2; Liu et al. motivate it as a guard against overoptimization).

Miniature, per seed s (everything below is shared by DPO and RPO, only the loss differs):
  1. SFT: the shipped tiny sentiment base (`configs/default.py`'s pretrain) fine-tuned on the
     `sentiment` task's demonstrations (`stages.sft_policy`, the default experiment's settings).
  2. Pairs: `samples_per_prompt` samples of the SFT policy per train prompt, scored by the
     exploitable proxy `length_proxy` = VADER gold + `length_weight` * (words in the response).
     The gold scorer ignores length, so the proxy-labelled pairs carry a spurious "longer is
     better" signal next to the real one; best vs worst proxy score makes a pair
     (`best_worst_pairs`, pairs closer than `min_margin` or with an empty response dropped).
  3. DPO (`dpo`, beta) and RPO (`rpo`, same beta, `variant="average"`, eta = `rpo_eta`: DPO +
     eta * mean-token NLL of the chosen response) from the SFT policy, SFT as the reference,
     same pairs, steps, batch, learning rate and seed.
  4. Tracked: the chosen responses' log-likelihood change `log pi(y_c|x) - log pi_sft(y_c|x)`
     on every training batch (= the engine's `chosen_rewards / beta`; exactly 0 at step 1),
     and `logps_chosen` (absolute); at the end, gold reward / win rate / KL of
     `eval.num_prompts` x `eval.samples_per_prompt` samples on held-out prompts against the SFT
     policy (`stages.evaluate`), and the mean response length (tokens).

Decision rule (`supported`): with delta_m = per-seed mean chosen log-likelihood change over the
last `tail_fraction` of logged steps, (a) mean delta_DPO + std delta_DPO < 0 (DPO's chosen
likelihood falls on every reading of the spread) and (b) mean delta_RPO > mean delta_DPO + the
larger of the two stds (RPO holds it clearly better). Gold reward is reported, not part of the rule.

    python -m experiments.reproduce.rpo --out runs/reproduce/rpo [--quick] [--seeds N]
"""

from __future__ import annotations

import json
import os
import time

import ml_collections
import numpy as np

from alignment import data as data_lib
from alignment import losses, tasks
from alignment import metrics as metrics_lib
from alignment.engine.config import get_config
from alignment.evaluation import write_json
from alignment.learners.pairs import best_worst_rows as best_worst_pairs
from alignment.tokenizer import Tokenizer
from experiments.pipelines import stages
from experiments.reproduce import common, rso

NAME = "rpo"
PAPER = (
    "Liu et al., 2024, Provably Mitigating Overoptimization in RLHF (RPO); Pang et al., 2024, "
    "Iterative Reasoning Preference Optimization"
)
CLAIM = (
    "On pairs labelled by an exploitable proxy reward, DPO's log-likelihood of the chosen responses falls "
    "during training while RPO (DPO + NLL of the chosen response) holds it."
)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def settings_for(quick: bool) -> dict:
    """Every knob of the run (recorded in results.json)."""
    return {
        "task": "sentiment",
        "sft": rso.settings_for(quick)[
            "sft"
        ],  # the RSO reproduction's SFT stage, shared through the workdir
        "pairs": {
            "num_prompts": 16 if quick else 256,
            "samples_per_prompt": 4,
            "max_new_tokens": 24,
            "temperature": 1.0,
            "min_margin": 0.05,
            "num_test": 4 if quick else 32,
        },
        # proxy reward per word: two extra words outweigh the gap between a neutral and a clearly
        # positive continuation (VADER ~0.8), so length decides many pairs
        "length_weight": 0.5,
        "train": {
            "steps": 4 if quick else 60,
            "batch": 8 if quick else 32,
            "lr": 3e-4,
            "warmup": 1 if quick else 10,
            "log_every": 1,
        },
        "beta": 0.1,
        "rpo_eta": 1.0,  # Pang et al.'s NLL weight (TRL's rpo_alpha=1.0)
        "tail_fraction": 0.2,
        "eval": {
            "num_prompts": 4 if quick else 32,
            "samples_per_prompt": 2 if quick else 4,
            "max_new_tokens": 24,
            "temperature": 1.0,
            "seed": 0,
            "split": "test",
        },
    }


# ----------------------------------------------------------------------------- the proxy


def length_proxy(prompts, responses, *, task, length_weight: float) -> np.ndarray:
    """Exploitable proxy reward: `gold(x, y) + length_weight * words(y)` (float64 [N]).

    The gold scorer (VADER for `sentiment`) does not care how long a continuation is; the proxy
    does, as learned reward models often over-reward length (Singhal et al., 2023)."""
    if len(prompts) != len(responses):
        raise ValueError(f"length_proxy: {len(prompts)} prompts but {len(responses)} responses")
    if not (np.isfinite(length_weight) and length_weight >= 0):
        raise ValueError(
            f"length_proxy: length_weight must be finite and >= 0, got {length_weight}"
        )
    gold = np.asarray(task.gold_rewards(list(prompts), list(responses)), np.float64)
    words = np.asarray([len(r.split()) for r in responses], np.float64)
    return gold + length_weight * words


# ----------------------------------------------------------------------------- stages

base_policy, sft = (
    rso.base_policy,
    rso.sft,
)  # the same shipped base and SFT stage as the RSO reproduction


def proxy_pairs(sft_hf: str, tokenizer, task, out_dir: str, seed: int, s: dict) -> dict:
    """out_dir/{train,test}.jsonl: best vs worst proxy score of the SFT samples per prompt
    (train prompts / validation prompts); out_dir/stats.json last, so its presence means done."""
    stats_path = os.path.join(out_dir, "stats.json")
    p = s["pairs"]
    made_with = {**p, "length_weight": s["length_weight"], "sft_policy": sft_hf, "seed": seed}
    if os.path.isfile(stats_path):
        with open(stats_path) as f:
            stats = json.load(f)
        if stats.get("settings") != made_with:
            raise ValueError(
                f"{out_dir} holds pairs made with other settings ({stats.get('settings')} there, "
                f"{made_with} now): use a fresh --workdir"
            )
        return stats
    stats = {"settings": made_with}
    for split, n, name, offset in (
        ("train", p["num_prompts"], "train", 1),
        ("validation", p["num_test"], "test", 2),
    ):
        prompts = task.prompts(
            split, n, seed + offset
        )  # other prompts than the SFT demonstrations'
        k = p["samples_per_prompt"]
        samples = stages.sample(
            sft_hf,
            tokenizer,
            prompts,
            samples_per_prompt=k,
            max_new_tokens=p["max_new_tokens"],
            temperature=p["temperature"],
            seed=seed + offset,
        )
        texts = samples.flat()
        flat_prompts = [q for q in prompts for _ in range(k)]
        proxy = length_proxy(flat_prompts, texts, task=task, length_weight=s["length_weight"])
        gold = np.asarray(task.gold_rewards(flat_prompts, texts), np.float64)
        rows, dropped = best_worst_pairs(
            prompts, texts, proxy, samples_per_prompt=k, min_margin=p["min_margin"]
        )
        if not rows:
            raise ValueError(
                f"rpo: no {split} pair survived (min_margin={p['min_margin']}); sample more"
            )
        gold_of = dict(zip(zip(flat_prompts, texts), gold))
        for r in rows:
            r["chosen_gold"] = float(gold_of[(r["prompt"], r["chosen"])])
            r["rejected_gold"] = float(gold_of[(r["prompt"], r["rejected"])])
        data_lib.write_jsonl(rows, os.path.join(out_dir, f"{name}.jsonl"))
        words = lambda key: float(np.mean([len(r[key].split()) for r in rows]))  # noqa: E731
        stats[name] = {
            "prompts": len(prompts),
            "pairs": len(rows),
            "dropped": dropped,
            "sample_gold": float(gold.mean()),
            "proxy_gold_corr": float(np.corrcoef(proxy, gold)[0, 1]),
            "chosen_gold": float(np.mean([r["chosen_gold"] for r in rows])),
            "rejected_gold": float(np.mean([r["rejected_gold"] for r in rows])),
            "gold_agrees_with_proxy": float(
                np.mean([r["chosen_gold"] > r["rejected_gold"] for r in rows])
            ),
            "chosen_words": words("chosen"),
            "rejected_words": words("rejected"),
        }
    write_json(stats, stats_path)
    return stats


def preference_config(loss: str, s: dict):
    """The default experiment's DPO stage with `loss` (dpo | rpo) and this run's sizes."""
    c = get_config(os.path.join(REPO, "configs", "default.py")).dpo.copy_and_resolve_references()
    c.unlock()
    t = s["train"]
    c.loss = loss
    kw = losses.defaults(loss)
    kw["beta"] = s["beta"]
    if loss == "rpo":
        kw.update(variant="average", eta=s["rpo_eta"])
    c.loss_kwargs = ml_collections.ConfigDict(kw)
    c.num_train_steps = t["steps"]
    c.checkpoint_every_steps = t["steps"]
    c.global_batch_size = t["batch"]
    c.log_every_steps = t["log_every"]
    c.optim.learning_rate = t["lr"]
    c.optim.warmup_steps = t["warmup"]
    c.task = s["task"]
    c.data.max_prompt_len = s["sft"]["max_prompt_len"]
    c.data.max_len = s["sft"]["max_len"]
    c.lock()
    return c


def chosen_curve(workdir: str, beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, chosen log-likelihood change vs SFT, absolute chosen log-likelihood) per logged step."""
    lines = [
        r
        for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
        if "chosen_rewards" in r
    ]
    if not lines:
        raise ValueError(
            f"{workdir}/metrics.jsonl has no chosen_rewards: was the run a preference run?"
        )
    steps = np.asarray([r["step"] for r in lines])
    delta = np.asarray(
        [r["chosen_rewards"] / beta for r in lines]
    )  # chosen_rewards = beta * mean(pc - rc)
    return steps, delta, np.asarray([r["logps_chosen"] for r in lines])


def tail_mean(values: np.ndarray, fraction: float) -> float:
    """Mean of the last `fraction` of the values (at least one)."""
    n = max(1, int(round(len(values) * fraction)))
    return float(np.mean(values[-n:]))


# ----------------------------------------------------------------------------- main


def run_seed(seed: int, base: str, workdir: str, s: dict) -> dict:
    task = tasks.get_task(s["task"])
    tokenizer = Tokenizer.from_pretrained(base)
    sft_hf = sft(base, workdir, seed, s)
    pair_dir = os.path.join(workdir, "pairs")
    pair_stats = proxy_pairs(sft_hf, tokenizer, task, pair_dir, seed, s)
    out = {"pairs": pair_stats, "methods": {}}
    e = s["eval"]
    for loss in ("dpo", "rpo"):
        run_dir = os.path.join(workdir, loss)
        cfg = stages.with_data(
            preference_config(loss, s),
            data_dir=pair_dir,
            seed=seed,
            tokenizer=base,
            init_from=sft_hf,
        )
        hf = stages.run_stage(cfg, run_dir)
        ev = stages.evaluate(
            hf,
            sft_hf,
            tokenizer,
            task,
            path=os.path.join(workdir, f"eval_{loss}.json"),
            num_prompts=e["num_prompts"],
            samples_per_prompt=e["samples_per_prompt"],
            max_new_tokens=e["max_new_tokens"],
            temperature=e["temperature"],
            seed=e["seed"],
            split=e["split"],
        )
        steps, delta, logps = chosen_curve(run_dir, s["beta"])
        out["methods"][loss] = {
            "steps": steps.tolist(),
            "delta": delta.tolist(),
            "logps": logps.tolist(),
            "delta_tail": tail_mean(delta, s["tail_fraction"]),
            "logps_tail": tail_mean(logps, s["tail_fraction"]),
            "eval": ev,
        }
    return out


def decide(delta_dpo: dict, delta_rpo: dict) -> tuple[bool, str]:
    """The docstring's rule on `common.stats` of the per-seed tail deltas."""
    spread = max(delta_dpo["std"], delta_rpo["std"])
    falls = delta_dpo["mean"] + delta_dpo["std"] < 0
    holds = delta_rpo["mean"] > delta_dpo["mean"] + spread
    txt = (
        f"chosen log-likelihood change vs SFT over the last steps: DPO {delta_dpo['mean']:+.2f} ± "
        f"{delta_dpo['std']:.2f}, RPO {delta_rpo['mean']:+.2f} ± {delta_rpo['std']:.2f} nats"
    )
    if falls and holds:
        return True, f"Supported: {txt}; DPO's falls, RPO's stays above it by more than the spread."
    why = []
    if not falls:
        why.append("DPO's chosen likelihood did not fall clearly (mean + std >= 0)")
    if not holds:
        why.append(f"RPO is not above DPO by more than the larger std ({spread:.2f})")
    return False, f"Not supported: {txt}; " + "; ".join(why) + "."


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
    for loss in ("dpo", "rpo"):
        m = [per_seed[seed]["methods"][loss] for seed in seeds]
        rows.append(
            common.row(
                loss.upper(),
                seeds,
                chosen_logp_change=[x["delta_tail"] for x in m],
                chosen_logp=[x["logps_tail"] for x in m],
                gold_reward=[x["eval"]["gold_reward"] for x in m],
                win_rate_vs_sft=[x["eval"]["win_rate"] for x in m],
                kl_vs_sft=[x["eval"]["kl"] for x in m],
                response_length=[x["eval"]["response_length"] for x in m],
            )
        )
    sft_gold = [per_seed[seed]["methods"]["dpo"]["eval"]["reference_gold_reward"] for seed in seeds]
    rows.insert(0, common.row("SFT", seeds, gold_reward=sft_gold))
    supported, verdict = decide(rows[1]["chosen_logp_change"], rows[2]["chosen_logp_change"])
    g = {r["method"]: r["gold_reward"]["mean"] for r in rows}
    train_pairs = {
        k: np.mean([per_seed[x]["pairs"]["train"][k] for x in seeds])
        for k in ("gold_agrees_with_proxy", "chosen_words", "rejected_words")
    }
    verdict += (
        f" Held-out gold reward: SFT {g['SFT']:.3f}, DPO {g['DPO']:.3f}, RPO {g['RPO']:.3f}; the proxy's "
        f"chosen response has the higher gold score in {train_pairs['gold_agrees_with_proxy']:.2f} of train "
        f"pairs (chosen {train_pairs['chosen_words']:.1f} vs rejected {train_pairs['rejected_words']:.1f} words)."
    )

    series = {}
    for loss in ("dpo", "rpo"):
        steps = per_seed[seeds[0]]["methods"][loss]["steps"]
        d = np.asarray([per_seed[seed]["methods"][loss]["delta"] for seed in seeds])  # [S, T]
        sd = d.std(0, ddof=1) if len(seeds) > 1 else np.zeros(d.shape[1])
        series[loss.upper()] = [
            (float(x), float(m), float(v)) for x, m, v in zip(steps, d.mean(0), sd)
        ]
    curve = common.line_plot(
        series,
        os.path.join(args.out, "chosen_logp_vs_step.png"),
        xlabel="step",
        ylabel="log pi(y_c|x) - log pi_sft(y_c|x)",
        title=f"chosen log-likelihood vs SFT ({len(seeds)} seeds, mean ± std)",
    )
    bars = common.bar_plot(
        rows,
        "gold_reward",
        os.path.join(args.out, "gold_reward.png"),
        title="held-out gold reward (VADER)",
    )
    s["seeds"] = seeds
    s["pair_stats"] = {str(seed): per_seed[seed]["pairs"] for seed in seeds}
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
