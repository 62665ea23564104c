"""The RSO pipeline (`config.kind == "rso"`, `configs/rso.py`): [SFT stage] -> sample -> score
-> rejection-sample (`alignment.learners.rso`) -> pair (`alignment.learners.pairs`) ->
`WORKDIR/rso_data/{train,test}.jsonl` (reused on a re-run) -> the preference stage in WORKDIR
(its metrics.jsonl also carries `reward_mean`, the mean gold reward of the training pairs'
responses, and `kl`). Generation statistics go to `WORKDIR/rso.json`.

    python -m experiments.train --config configs/rso.py:tiny --workdir /tmp/rso
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import numpy as np

from alignment import data as data_lib
from alignment import engine, learners, models, sharding, tasks
from alignment import rewards as rewards_lib
from alignment.evaluation import harness, read_json
from alignment.learners import pairs as pairs_lib
from alignment.learners import rso as rso_lib
from alignment.learners.rso import LOSSES, PAIRINGS, SAMPLERS
from experiments.pipelines import stages

log = logging.getLogger(__name__)

STATS_FILE = "rso.json"
DATA_DIR = "rso_data"


# ----------------------------------------------------------------------------- config checks


def check_rso_config(config) -> None:
    """Semantic checks of an `rso` config (before any model is loaded); `validate` also checks its
    stages."""
    s = config.rso
    if s.sampler not in SAMPLERS:
        raise ValueError(f"config.rso.sampler must be one of {SAMPLERS}, got {s.sampler!r}")
    if s.pairing not in PAIRINGS:
        raise ValueError(f"config.rso.pairing must be one of {PAIRINGS}, got {s.pairing!r}")
    if config.preference.loss not in LOSSES:
        raise ValueError(
            f"config.preference.loss must be one of {LOSSES}, got {config.preference.loss!r}"
        )
    for key in ("num_prompts", "num_samples", "num_accepted", "max_new_tokens", "batch_size"):
        if int(s[key]) < 1:
            raise ValueError(f"config.rso.{key} must be >= 1, got {s[key]}")
    if s.num_eval_prompts < 0 or s.sft_steps < 0:
        raise ValueError("config.rso.num_eval_prompts and config.rso.sft_steps must be >= 0")
    if s.num_accepted < 2:
        raise ValueError(
            f"config.rso.num_accepted={s.num_accepted}: pairing needs at least 2 samples per prompt"
        )
    if s.sampler == "rso" and s.num_accepted > s.num_samples:
        raise ValueError(
            f"config.rso.num_accepted={s.num_accepted} exceeds config.rso.num_samples="
            f"{s.num_samples}: rejection sampling keeps a subset of the candidates"
        )
    if not s.beta > 0:
        raise ValueError(f"config.rso.beta must be > 0, got {s.beta}")
    if not s.temperature > 0:
        raise ValueError(
            f"config.rso.temperature must be > 0 (sampling from pi_sft), got {s.temperature}"
        )
    if s.top_k < 0 or s.margin < 0:
        raise ValueError("config.rso.top_k (0 = off) and config.rso.margin must be >= 0")
    if not config.task:
        raise ValueError("config.task must name the embedded task whose prompts RSO samples on")
    if not config.init_from and not s.sft_steps:
        raise ValueError(
            "RSO starts from an SFT policy: set config.init_from to its HF folder, "
            "or config.rso.sft_steps > 0 to SFT one on the task's demonstrations first"
        )
    for stage in ("sft", "preference"):
        if config[stage].data.chat_template:
            raise ValueError(
                f"config.{stage}.data.chat_template=True is not supported by RSO yet: its pairs "
                "are plain text"
            )
    if not s.num_eval_prompts and config.preference.eval_every_steps:
        raise ValueError(
            f"config.rso.num_eval_prompts=0 writes no held-out pairs: set "
            f"config.preference.eval_every_steps=0 (it is {config.preference.eval_every_steps})"
        )


# ----------------------------------------------------------------------------- generation


def make_pairs_for_split(
    config, policy, tokenizer, reward_fn, task, *, split: str, num_prompts: int, seed: int
) -> tuple[list[dict], dict]:
    """Sample -> score -> (rejection-sample) -> pair on `num_prompts` prompts of `split`.

    Returns the JSONL rows (prompt, chosen, rejected, their rewards and gold rewards) and the
    generation statistics of this split."""
    s = config.rso
    prompts = list(task.prompts(split, num_prompts, seed))
    if not prompts:
        raise ValueError(f"task {task.name!r} split {split!r} gave no prompts")
    n = s.num_samples if s.sampler == "rso" else s.num_accepted
    prompt_ids = harness.encode_prompts(tokenizer, prompts, chat_template=False)
    flat_ids = [ids for ids in prompt_ids for _ in range(n)]
    flat_prompts = [p for p in prompts for _ in range(n)]
    tokens = harness.generate_all(
        policy,
        flat_ids,
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        eos_id=tokenizer.eos_id,
        seed=seed,
        batch_size=s.batch_size,
        top_k=s.top_k or None,
    )
    bodies, texts, finished = [], [], []
    for toks in tokens:
        body, done = harness.strip_eos(toks, tokenizer.eos_id)
        bodies.append(body)
        texts.append(harness.decode_response(tokenizer, body)[0])
        finished.append(done)
    r_flat = np.asarray(
        reward_fn(
            rewards_lib.RewardInputs(
                prompts=flat_prompts, responses=texts, prompt_ids=flat_ids, response_ids=bodies
            )
        )
    )
    gold_flat = task.gold_rewards(flat_prompts, texts).astype(np.float64)
    g = len(prompts)
    r_GxN, gold_GxN = r_flat.reshape(g, n), gold_flat.reshape(g, n)
    if s.sampler == "rso":
        acc = rso_lib.rejection_sample(r_GxN, num_accepted=s.num_accepted, beta=s.beta, seed=seed)
        idx_GxM, rounds, first_rate = acc.index, acc.rounds, acc.first_round_rate
    else:
        idx_GxM = np.tile(np.arange(n), (g, 1))
        rounds, first_rate = np.ones(g), 1.0
    rows_g = np.arange(g)[:, None]
    r_GxM, gold_GxM = r_GxN[rows_g, idx_GxM], gold_GxN[rows_g, idx_GxM]
    pairs = pairs_lib.make_pairs(r_GxM, strategy=s.pairing, seed=seed, margin=s.margin)
    rows, same_text = [], 0
    for gi, c, rj in zip(pairs.group, pairs.chosen, pairs.rejected):
        ci, ri = int(idx_GxM[gi, c]), int(idx_GxM[gi, rj])
        tc, tr = texts[gi * n + ci], texts[gi * n + ri]
        if tc == tr or not tc.strip() or not tr.strip():
            same_text += (
                1  # the data checks refuse identical or empty responses; counted, not hidden
            )
            continue
        rows.append(
            {
                "prompt": prompts[gi],
                "chosen": tc,
                "rejected": tr,
                "chosen_reward": float(r_GxN[gi, ci]),
                "rejected_reward": float(r_GxN[gi, ri]),
                "chosen_gold": float(gold_GxN[gi, ci]),
                "rejected_gold": float(gold_GxN[gi, ri]),
            }
        )
    stats = {
        "split": split,
        "prompts": g,
        "samples_per_prompt": n,
        "accepted_per_prompt": int(s.num_accepted),
        "acceptance_rate": float(s.num_accepted / n),
        "first_round_acceptance_rate": first_rate,
        "rounds_mean": float(np.mean(rounds)),
        "reward_mean_all": float(r_GxN.mean()),
        "reward_mean_accepted": float(r_GxM.mean()),
        "gold_mean_all": float(gold_GxN.mean()),
        "gold_mean_accepted": float(gold_GxM.mean()),
        "finished_fraction": float(np.mean(finished)),
        **pairs.stats(),
        "pairs_written": len(rows),
        "pairs_dropped_empty_or_identical": same_text,
    }
    if rows:
        stats["reward_mean"] = float(
            np.mean([[x["chosen_gold"], x["rejected_gold"]] for x in rows])
        )
    return rows, stats


def stage_configs(config, workdir: str, sft_path: str):
    """(sft, preference): the stage configs `config` declares, reading their data under
    `workdir` (WORKDIR/sft/sft_data; WORKDIR/rso_data) and the preference stage starting from
    `sft_path`."""
    sft = config.sft.copy_and_resolve_references()
    sft_dir = os.path.join(workdir, "sft")
    sft.data.manual_dir = os.path.join(sft_dir, "sft_data")
    sft.data.data_dir = os.path.join(sft_dir, "tfds")
    pref = config.preference.copy_and_resolve_references()
    pref.model.init_from = sft_path
    pref.data.manual_dir = os.path.join(workdir, DATA_DIR)
    pref.data.data_dir = os.path.join(workdir, "tfds")
    return sft, pref


def sft_policy(config, workdir: str) -> str:
    """`config.init_from`, or the `sft` stage on the task's demonstrations (WORKDIR/sft/hf)."""
    if config.init_from:
        return os.path.abspath(config.init_from)
    out = os.path.join(workdir, "sft")
    hf = os.path.join(out, "hf")
    if os.path.isfile(os.path.join(hf, "config.json")):
        return hf
    stages.write_demonstrations(
        tasks.get_task(config.task),
        os.path.join(out, "sft_data"),
        num_prompts=int(config.rso.sft_examples),
        seed=config.seed,
        num_eval=16,
    )
    sft, _ = stage_configs(config, workdir, "")
    learners.run(sft, out)
    return hf


def generation_settings(config, sft_path: str) -> dict:
    """What the pairs depend on; a re-run reuses them only when this is unchanged."""
    s = config.rso
    keys = (
        "sampler",
        "num_prompts",
        "num_eval_prompts",
        "num_samples",
        "num_accepted",
        "beta",
        "temperature",
        "top_k",
        "max_new_tokens",
        "pairing",
        "margin",
    )
    return {
        **{k: s[k] for k in keys},
        "task": config.task,
        "seed": config.seed,
        "sft_policy": sft_path,
        "reward": config.reward.to_dict(),
    }


def validate(config, workdir: str = "WORKDIR") -> tuple:
    """`check_rso_config`, then the checks of its stages (the `sft` stage only when it runs);
    returns the (sft, preference) stage configs for `workdir`."""
    check_rso_config(config)
    sft, pref = stage_configs(config, workdir, config.init_from or "<sft stage>")
    learners.validate(pref)
    if not config.init_from:
        learners.validate(sft)
    return sft, pref


def train_rso(config, workdir: str):
    """SFT policy -> RSO pairs -> offline preference training in `workdir`; returns its state."""
    workdir = os.path.abspath(workdir)
    validate(config, workdir)  # the stages' configs must be valid before anything expensive runs
    os.makedirs(workdir, exist_ok=True)
    rewards_lib.check_reward_config(config.reward)
    sft_path = sft_policy(config, workdir)
    _, pref = stage_configs(config, workdir, sft_path)

    stats_path = os.path.join(workdir, STATS_FILE)
    train_file = os.path.join(workdir, DATA_DIR, "train.jsonl")
    gen = generation_settings(config, sft_path)
    if os.path.isfile(stats_path) and os.path.isfile(train_file):
        with open(stats_path) as f:
            stats = json.load(f)
        old = stats.get("generation", {})
        changed = sorted(k for k in set(gen) | set(old) if gen.get(k) != old.get(k))
        if changed:
            raise ValueError(
                f"{workdir} holds RSO pairs made with other settings ({changed}: "
                f"{[old.get(k) for k in changed]} there, {[gen.get(k) for k in changed]} now); "
                "use a fresh workdir"
            )
        log.info("rso: reusing the pairs in %s", train_file)
    else:
        tokenizer = engine.make_tokenizer(config.tokenizer)
        mesh = sharding.make_mesh(pref.mesh.to_dict())
        task = tasks.get_task(config.task)
        policy = models.from_pretrained(sft_path)
        reward_fn = rewards_lib.make_reward(config.reward, tokenizer=tokenizer, mesh=mesh)
        stats = {"sft_policy": sft_path, "generation": gen}
        rows, stats["train"] = make_pairs_for_split(
            config,
            policy,
            tokenizer,
            reward_fn,
            task,
            split="train",
            num_prompts=config.rso.num_prompts,
            seed=config.seed,
        )
        if not rows:
            raise ValueError(
                f"rso: no training pair survived ({stats['train']}); raise rso.num_prompts, "
                "lower rso.margin or check the reward"
            )
        eval_rows = []
        if config.rso.num_eval_prompts:
            eval_rows, stats["eval"] = make_pairs_for_split(
                config,
                policy,
                tokenizer,
                reward_fn,
                task,
                split="validation",
                num_prompts=config.rso.num_eval_prompts,
                seed=config.seed + 1,
            )
            if not eval_rows:
                raise ValueError(
                    f"rso: no held-out pair survived ({stats['eval']}); set rso.num_eval_prompts=0"
                )
        if eval_rows:  # an empty test.jsonl would be an empty split, which the TFDS build refuses
            data_lib.write_jsonl(eval_rows, os.path.join(workdir, DATA_DIR, "test.jsonl"))
        data_lib.write_jsonl(rows, train_file)
        with open(stats_path + ".tmp", "w") as f:
            json.dump(stats, f, indent=1)
        os.replace(stats_path + ".tmp", stats_path)
        del policy
    log.info("rso: %s", stats["train"])
    return learners.run(pref, workdir, extra_metrics={"reward_mean": stats["train"]["reward_mean"]})


def summary(workdir: str) -> Optional[dict]:
    """The generation statistics `train_rso` wrote (None before it ran)."""
    return read_json(os.path.join(workdir, STATS_FILE))
