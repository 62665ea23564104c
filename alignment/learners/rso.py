"""RSO: statistical rejection sampling optimisation (Liu et al., 2023, "Statistical Rejection
Sampling Improves Preference Optimization").

Target: the KL-regularised optimum `pi_r(y|x) ∝ pi_sft(y|x) * exp(r(x, y) / beta)`. Per prompt,
draw N candidates from pi_sft, score them, and keep M of them by rejection sampling: a
candidate with reward r is accepted with probability `pi_r / (M_x pi_sft) = exp((r - r_max)/beta)`
where `r_max` (the envelope) is the largest reward among the candidates not yet accepted,
recomputed each round, until M are accepted (the paper's Algorithm 1 in the finite-candidate
form of its appendix code; the project method card says the same). The accepted samples
are paired (random or tournament), labelled by reward, and trained on with `hinge`
(`relu(1 - gamma*h)`, the paper's hinge-norm) or `dpo` (the paper's sigmoid-norm,
`-logsig(gamma*h)`), gamma = the loss's `beta` (0.05 in the paper), reference = pi_sft.

Note: this library's `sigmoid_norm` loss is *length-normalised* DPO; RSO's "sigmoid-norm" is
plain DPO normalised by the SFT policy, i.e. `dpo`. Both are allowed; `dpo` is the paper's.

`rso.sampler = "sft"` skips the rejection step (M plain SFT samples per prompt): the "DPO/SLiC
on SFT samples" baselines of the paper.

`train_rso(config, workdir)` is the dispatch target of `alignment.train.train` for
`config.kind == "rso"`: [optional SFT stage] -> sample -> score -> rejection-sample -> pair ->
`WORKDIR/rso_data/{train,test}.jsonl` (reused on a re-run) -> the offline preference engine in
WORKDIR (its metrics.jsonl also carries `reward_mean`, the mean gold reward of the training
pairs' responses, and `kl`, see `alignment.learners.offline.preference_loss`). Generation
statistics go to `WORKDIR/rso.json`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from typing import Optional

import ml_collections
import numpy as np

from alignment import data as data_lib
from alignment import losses
from alignment.learners import pairs as pairs_lib

log = logging.getLogger(__name__)

SAMPLERS = ("rso", "sft")
PAIRINGS = ("random", "tournament")
LOSSES = ("hinge", "dpo", "sigmoid_norm")
STATS_FILE = "rso.json"
DATA_DIR = "rso_data"


# ----------------------------------------------------------------------------- Algorithm 1

@dataclasses.dataclass(frozen=True)
class Accepted:
    """Result of `rejection_sample`: `index_GxM[g]` are candidate columns of group g in
    acceptance order; `rounds_G` the rounds each group needed; `first_round_rate` the mean
    fraction of a group's candidates accepted in round 1 (an estimate of 1/M_x before the
    without-replacement correction)."""
    index_GxM: np.ndarray
    rounds_G: np.ndarray
    first_round_rate: float


def _check_rewards(rewards_GxN, mask_GxN, name="rewards_GxN"):
    r = np.asarray(rewards_GxN)
    if r.ndim != 2 or not np.issubdtype(r.dtype, np.number):
        raise ValueError(f"{name} must be a 2-D numeric array [groups, candidates], got shape {r.shape} "
                         f"dtype {r.dtype}")
    r = r.astype(np.float64)
    mask = np.ones(r.shape, bool) if mask_GxN is None else np.asarray(mask_GxN, bool)
    if mask.shape != r.shape:
        raise ValueError(f"mask shape {mask.shape} != {name} shape {r.shape}")
    bad = mask & ~np.isfinite(r)
    if bad.any():
        g, n = np.argwhere(bad)[0]
        raise ValueError(f"{name}[{g}, {n}] = {r[g, n]} is not finite (prompt {g}, candidate {n}); "
                         f"{int(bad.sum())} non-finite reward(s) in all")
    return r, mask


def rejection_sample(rewards_GxN, *, num_accepted: int, beta: float, seed: int = 0,
                     mask_GxN=None) -> Accepted:
    """Statistical rejection sampling (RSO Algorithm 1), vectorised over G prompts.

    Each round, every still-pending candidate of group g is accepted independently with
    probability `exp((r - r_max_g) / beta)`, `r_max_g` the max over its pending candidates;
    accepted ones leave the pool, and within a round candidates are visited in column order,
    stopping once `num_accepted` are in (the paper's loop `break`). The max candidate is always
    accepted, so at most `num_accepted` rounds run. beta -> inf accepts the first M candidates
    (plain pi_sft samples); beta -> 0 accepts the top-M rewards (best-of-N).
    """
    r, mask = _check_rewards(rewards_GxN, mask_GxN)
    m = int(num_accepted)
    if isinstance(num_accepted, bool) or m != num_accepted or m < 1:
        raise ValueError(f"num_accepted must be an int >= 1, got {num_accepted!r}")
    if not (beta > 0):  # also rejects NaN; +inf is allowed (accept everything)
        raise ValueError(f"beta must be > 0 (inf allowed), got {beta!r}")
    have = mask.sum(1)
    short = np.flatnonzero(have < m)
    if short.size:
        raise ValueError(f"num_accepted={m} exceeds the {int(have[short[0]])} candidate(s) of prompt "
                         f"{int(short[0])} ({short.size} prompt(s) have fewer than {m})")
    g_count, _ = r.shape
    rng = np.random.default_rng(seed)
    pending = mask.copy()
    index = np.full((g_count, m), -1, np.int64)
    count = np.zeros(g_count, np.int64)
    rounds = np.zeros(g_count, np.int64)
    first_rate = None
    while (count < m).any():
        active = count < m
        r_max = np.max(np.where(pending, r, -np.inf), axis=1, keepdims=True)
        r_max = np.where(np.isfinite(r_max), r_max, 0.0)  # a finished group has an empty pool
        gap = np.where(pending, r, r_max) - r_max  # <= 0; 0 off the pool (masked by `pending`)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_accept = np.where(gap == 0, 0.0, gap / beta)  # beta = inf: 0; tiny beta: -inf
        u = rng.random(r.shape)
        acc = pending & active[:, None] & (u < np.exp(log_accept))
        if first_rate is None:
            first_rate = float(np.mean(acc.sum(1) / np.maximum(have, 1)))
        csum = np.cumsum(acc, axis=1)
        acc &= csum <= (m - count)[:, None]
        gi, ni = np.nonzero(acc)
        index[gi, count[gi] + csum[gi, ni] - 1] = ni
        count += acc.sum(1)
        pending &= ~acc
        rounds += active
    return Accepted(index_GxM=index, rounds_G=rounds, first_round_rate=float(first_rate or 0.0))


def target_distribution(pi_sft_A, rewards_A, beta: float) -> np.ndarray:
    """`pi_sft * exp(r / beta)` normalised (log-space), the distribution RSO samples from."""
    logits = np.log(np.asarray(pi_sft_A, np.float64)) + np.asarray(rewards_A, np.float64) / beta
    p = np.exp(logits - logits.max())
    return p / p.sum()


# ----------------------------------------------------------------------------- config checks

def check_rso_config(config) -> None:
    """Semantic checks of the `rso` section (before any model is loaded)."""
    s = config.rso
    if s.sampler not in SAMPLERS:
        raise ValueError(f"config.rso.sampler must be one of {SAMPLERS}, got {s.sampler!r}")
    if s.pairing not in PAIRINGS:
        raise ValueError(f"config.rso.pairing must be one of {PAIRINGS}, got {s.pairing!r}")
    if s.loss not in LOSSES or config.loss != s.loss:
        raise ValueError(f"config.rso.loss must be one of {LOSSES} and equal config.loss; got "
                         f"rso.loss={s.loss!r}, loss={config.loss!r}")
    for key in ("num_prompts", "num_samples", "num_accepted", "max_new_tokens", "batch_size"):
        if int(s[key]) < 1:
            raise ValueError(f"config.rso.{key} must be >= 1, got {s[key]}")
    if s.num_eval_prompts < 0 or s.sft_steps < 0:
        raise ValueError("config.rso.num_eval_prompts and config.rso.sft_steps must be >= 0")
    if s.num_accepted < 2:
        raise ValueError(f"config.rso.num_accepted={s.num_accepted}: pairing needs at least 2 samples per prompt")
    if s.sampler == "rso" and s.num_accepted > s.num_samples:
        raise ValueError(f"config.rso.num_accepted={s.num_accepted} exceeds config.rso.num_samples="
                         f"{s.num_samples}: rejection sampling keeps a subset of the candidates")
    if not s.beta > 0:
        raise ValueError(f"config.rso.beta must be > 0, got {s.beta}")
    if not s.temperature > 0:
        raise ValueError(f"config.rso.temperature must be > 0 (sampling from pi_sft), got {s.temperature}")
    if s.top_k < 0 or s.margin < 0:
        raise ValueError("config.rso.top_k (0 = off) and config.rso.margin must be >= 0")
    if not config.task:
        raise ValueError("config.task must name the embedded task whose prompts RSO samples on")
    if not config.model.init_from and not s.sft_steps:
        raise ValueError("RSO starts from an SFT policy: set config.model.init_from to its HF folder, "
                         "or config.rso.sft_steps > 0 to SFT one on the task's demonstrations first")
    if config.data.chat_template:
        raise ValueError("config.data.chat_template=True is not supported by RSO yet: its pairs are plain text")


def preference_config(config, workdir: str, init_from: str):
    """The offline `preference` config that trains on the pairs RSO wrote under `workdir`."""
    c = copy.deepcopy(config)
    c.unlock()
    c.kind = "preference"
    del c["rso"]
    del c["reward"]
    c.model.init_from = init_from
    d = c.data
    d.kind, d.source, d.builder, d.format = "preference", "tfds", "alignment_generic", "plain"
    d.manual_dir = os.path.join(workdir, DATA_DIR)
    d.data_dir = os.path.join(workdir, "tfds")
    d.splits.train, d.splits.eval = "train", "test"
    if not config.rso.num_eval_prompts:
        c.eval_every_steps = 0
    c.lock()
    return c


def sft_config(config, workdir: str):
    """The SFT stage's config (when no SFT policy is given): the task's demonstrations."""
    c = copy.deepcopy(config)
    c.unlock()
    c.kind, c.loss, c.seed = "sft", "sft", config.seed
    del c["rso"]
    del c["reward"]
    c.loss_kwargs = ml_collections.ConfigDict(losses.defaults("sft"))
    c.reference.mode = "in_step"
    c.num_train_steps = int(config.rso.sft_steps)
    c.checkpoint_every_steps = c.num_train_steps  # a short stage: its exported policy is what counts
    c.optim.learning_rate = float(config.rso.sft_learning_rate)
    c.optim.warmup_steps = min(c.optim.warmup_steps, max(c.num_train_steps - 1, 0))
    c.eval_every_steps = 0
    c.export_hf = True
    old = c.data
    c.data = data_lib.default_data_config("sft")
    c.data.max_len, c.data.max_prompt_len, c.data.seed = old.max_len, old.max_prompt_len, old.seed
    c.data.source, c.data.builder, c.data.format = "tfds", "alignment_generic", "plain"
    c.data.manual_dir = os.path.join(workdir, "sft_data")
    c.data.data_dir = os.path.join(workdir, "tfds")
    c.lock()
    return c


# ----------------------------------------------------------------------------- generation

def make_pairs_for_split(config, policy, tokenizer, reward_fn, task, *, split: str, num_prompts: int,
                         seed: int) -> tuple[list[dict], dict]:
    """Sample -> score -> (rejection-sample) -> pair on `num_prompts` prompts of `split`.

    Returns the JSONL rows (prompt, chosen, rejected, their rewards and gold rewards) and the
    generation statistics of this split."""
    from alignment import rewards as rewards_lib
    from alignment.evaluation import harness
    s = config.rso
    prompts = list(task.prompts(split, num_prompts, seed))
    if not prompts:
        raise ValueError(f"task {task.name!r} split {split!r} gave no prompts")
    n = s.num_samples if s.sampler == "rso" else s.num_accepted
    prompt_ids = harness.encode_prompts(tokenizer, prompts, chat_template=False)
    flat_ids = [ids for ids in prompt_ids for _ in range(n)]
    flat_prompts = [p for p in prompts for _ in range(n)]
    tokens = harness.generate_all(policy, flat_ids, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                  eos_id=tokenizer.eos_id, seed=seed, batch_size=s.batch_size,
                                  top_k=s.top_k or None)
    bodies, texts, finished = [], [], []
    for toks in tokens:
        body, done = harness.strip_eos(toks, tokenizer.eos_id)
        bodies.append(body)
        texts.append(harness.decode_response(tokenizer, body)[0])
        finished.append(done)
    r_flat = np.asarray(reward_fn(rewards_lib.RewardInputs(prompts=flat_prompts, responses=texts,
                                                           prompt_ids=flat_ids, response_ids=bodies)))
    gold_flat = task.gold_rewards(flat_prompts, texts).astype(np.float64)
    g = len(prompts)
    r_GxN, gold_GxN = r_flat.reshape(g, n), gold_flat.reshape(g, n)
    if s.sampler == "rso":
        acc = rejection_sample(r_GxN, num_accepted=s.num_accepted, beta=s.beta, seed=seed)
        idx_GxM, rounds, first_rate = acc.index_GxM, acc.rounds_G, acc.first_round_rate
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
            same_text += 1  # the data checks refuse identical or empty responses; counted, not hidden
            continue
        rows.append({"prompt": prompts[gi], "chosen": tc, "rejected": tr,
                     "chosen_reward": float(r_GxN[gi, ci]), "rejected_reward": float(r_GxN[gi, ri]),
                     "chosen_gold": float(gold_GxN[gi, ci]), "rejected_gold": float(gold_GxN[gi, ri])})
    stats = {
        "split": split, "prompts": g, "samples_per_prompt": n, "accepted_per_prompt": int(s.num_accepted),
        "acceptance_rate": float(s.num_accepted / n), "first_round_acceptance_rate": first_rate,
        "rounds_mean": float(np.mean(rounds)),
        "reward_mean_all": float(r_GxN.mean()), "reward_mean_accepted": float(r_GxM.mean()),
        "gold_mean_all": float(gold_GxN.mean()), "gold_mean_accepted": float(gold_GxM.mean()),
        "finished_fraction": float(np.mean(finished)),
        **pairs.stats(), "pairs_written": len(rows), "pairs_dropped_empty_or_identical": same_text,
    }
    if rows:
        stats["reward_mean"] = float(np.mean([[x["chosen_gold"], x["rejected_gold"]] for x in rows]))
    return rows, stats


def _sft_policy(config, workdir: str) -> str:
    """`config.model.init_from`, or an SFT stage on the task's demonstrations (WORKDIR/sft/hf)."""
    if config.model.init_from:
        return os.path.abspath(config.model.init_from)
    from alignment import tasks
    from alignment import train as train_lib
    out = os.path.join(workdir, "sft")
    hf = os.path.join(out, "hf")
    if os.path.isfile(os.path.join(hf, "config.json")):
        return hf
    from alignment.learners import stages
    stages.write_demonstrations(tasks.get_task(config.task), os.path.join(out, "sft_data"),
                                num_prompts=int(config.rso.sft_examples), seed=config.seed, num_eval=16)
    train_lib.train(sft_config(config, out), out)
    return hf


def generation_settings(config, sft_path: str) -> dict:
    """What the pairs depend on; a re-run reuses them only when this is unchanged."""
    s = config.rso
    keys = ("sampler", "num_prompts", "num_eval_prompts", "num_samples", "num_accepted", "beta", "temperature",
            "top_k", "max_new_tokens", "pairing", "margin")
    return {**{k: s[k] for k in keys}, "task": config.task, "seed": config.seed, "sft_policy": sft_path,
            "reward": config.reward.to_dict()}


def train_rso(config, workdir: str):
    """SFT policy -> RSO pairs -> offline preference training in `workdir`; returns its state."""
    from alignment import models, sharding, tasks
    from alignment import rewards as rewards_lib
    from alignment import train as train_lib
    from alignment.learners.validation import validate_config
    check_rso_config(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    # the preference stage's config must be valid before anything expensive runs
    validate_config(preference_config(config, workdir, config.model.init_from or "<sft stage>"))
    rewards_lib.check_reward_config(config.reward)
    sft_path = _sft_policy(config, workdir)
    pref = preference_config(config, workdir, sft_path)

    stats_path = os.path.join(workdir, STATS_FILE)
    train_file = os.path.join(workdir, DATA_DIR, "train.jsonl")
    gen = generation_settings(config, sft_path)
    if os.path.isfile(stats_path) and os.path.isfile(train_file):
        with open(stats_path) as f:
            stats = json.load(f)
        old = stats.get("generation", {})
        changed = sorted(k for k in set(gen) | set(old) if gen.get(k) != old.get(k))
        if changed:
            raise ValueError(f"{workdir} holds RSO pairs made with other settings ({changed}: "
                             f"{[old.get(k) for k in changed]} there, {[gen.get(k) for k in changed]} now); "
                             "use a fresh workdir")
        log.info("rso: reusing the pairs in %s", train_file)
    else:
        tokenizer = train_lib.make_tokenizer(config.tokenizer)
        mesh = sharding.make_mesh(config.mesh.to_dict())
        task = tasks.get_task(config.task)
        policy = models.from_pretrained(sft_path)
        reward_fn = rewards_lib.make_reward(config.reward, tokenizer=tokenizer, mesh=mesh)
        stats = {"sft_policy": sft_path, "generation": gen}
        rows, stats["train"] = make_pairs_for_split(config, policy, tokenizer, reward_fn, task, split="train",
                                                    num_prompts=config.rso.num_prompts, seed=config.seed)
        if not rows:
            raise ValueError(f"rso: no training pair survived ({stats['train']}); raise rso.num_prompts, "
                             "lower rso.margin or check the reward")
        eval_rows = []
        if config.rso.num_eval_prompts:
            eval_rows, stats["eval"] = make_pairs_for_split(
                config, policy, tokenizer, reward_fn, task, split="validation",
                num_prompts=config.rso.num_eval_prompts, seed=config.seed + 1)
            if not eval_rows:
                raise ValueError(f"rso: no held-out pair survived ({stats['eval']}); set rso.num_eval_prompts=0")
        if eval_rows:  # an empty test.jsonl would be an empty split, which the TFDS build refuses
            data_lib.write_jsonl(eval_rows, os.path.join(workdir, DATA_DIR, "test.jsonl"))
        data_lib.write_jsonl(rows, train_file)
        with open(stats_path + ".tmp", "w") as f:
            json.dump(stats, f, indent=1)
        os.replace(stats_path + ".tmp", stats_path)
        del policy
    log.info("rso: %s", stats["train"])
    return train_lib.train(pref, workdir, extra_metrics={"reward_mean": stats["train"]["reward_mean"]})


def summary(workdir: str) -> Optional[dict]:
    """The generation statistics `train_rso` wrote (None before it ran)."""
    from alignment.evaluation import read_json
    return read_json(os.path.join(workdir, STATS_FILE))
