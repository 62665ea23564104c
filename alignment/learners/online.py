"""What the two online loops share: config checks, the prompt stream, the run set-up and the
rollout of one step (sample -> frozen reference -> gold and trained rewards).

    python -m experiments.train --config configs/grpo.py:tiny --workdir /tmp/grpo

Configs with `kind == "online"` run one of two loops on top of the engine's run context, picked
by `online.algorithm`: the policy-gradient loop (`learners/pg.py`: PPO, GRPO and its variants,
Self-Rewarding PPO) or the pairwise loop (`learners/online_pairs.py`: online DPO, SAIL). Each step:

1. `online.num_prompts` prompts of the task's train split (a fixed pool, walked in order, reshuffled
   every pass), each repeated `online.group_size` times (contiguous groups);
2. KV-cache sampling from the current parameters, the learner's own pytree (no copy), compiled
   once: batch and prompt length are fixed (`online.max_prompt_len`, left-padded);
3. one forward of the frozen reference (KL) and, for Self-Rewarding PPO, of the base model;
4. rewards (`config.reward`); `reward_mean` is always the task's gold reward of the samples;
5. the learner's batch: GRPO-family advantages (group z-score, mean-only, RLOO), PPO's GAE over
   per-token rewards with the KL folded in, or preference pairs for online DPO / SAIL
   (`pairs.make_pairs` inside each group, `online.pairing`; ties never become pairs: a slot
   without a pair gets weight 0 and is counted as `groups_without_pair`), optionally mixed
   with dataset pairs (`online.offline_fraction`, SAIL-DP's relabelling by the implicit reward);
6. `online.ppo_epochs` passes of `online.num_minibatches` shuffled minibatches, each one call
   of the engine's jitted, donated `train_step`, the sampled log-probs as old log-probs.

Metrics per step: reward_mean/std (gold), train_reward_mean (what is optimised), kl (sequence
k1 estimate of KL(pi_old || ref) on the samples), entropy, clip_fraction, response_length,
eos_fraction, generation and training tokens/s; preference learners add pairs_per_step, pair_ties,
groups_without_pair (and offline_pairs, offline_pair_ties, offline_flipped_fraction with dataset
pairs), their loss metrics being means over real pairs only. A NaN metric stops the run before a
checkpoint; checkpoints carry the state and the prompt and dataset-pair positions, and the
sampling key is a function of the step, so a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable

import jax
import numpy as np

from alignment import engine, losses, optim, rewards, sharding, tasks
from alignment import metrics as metrics_lib
from alignment.learners import pairs as pairs_lib
from alignment.learners import rollout
from alignment.learners.validation import check_positive
from alignment.rewards.base import RewardInputs

log = logging.getLogger(__name__)

ALGORITHMS = ("ppo", "grpo", "sr_ppo", "online_dpo", "sail")
PAIRWISE = ("online_dpo", "sail")  # the pairwise loop; the others run the policy-gradient loop
ADVANTAGES = ("group", "group_mean", "rloo", "gae")
LABELS = ("reward", "implicit")
OFFLINE_LABELS = ("dataset", "implicit")
IMPLICIT_LABELS = ("sampled", "argmax")
LOG_RATIO_REWARDS = ("sum", "token_mean")
PG_FAMILIES = ("policy_gradient",)


# ----------------------------------------------------------------------------- validation


def validate_online(config) -> None:
    """Semantic checks across keys, before anything is built; each error names the key."""
    o = config.online
    if o.algorithm not in ALGORITHMS:
        raise ValueError(
            f"config.online.algorithm must be one of {ALGORITHMS}, got {o.algorithm!r}"
        )
    if o.task not in tasks.available():
        raise ValueError(
            f"config.online.task={o.task!r} is not an embedded task; available: {tasks.available()}"
        )
    check_positive(
        o,
        (
            "num_prompts",
            "group_size",
            "max_prompt_len",
            "max_new_tokens",
            "ppo_epochs",
            "num_minibatches",
            "prompt_pool",
        ),
        prefix="config.online",
    )
    check_positive(
        config, ("num_train_steps", "checkpoint_every_steps", "keep_checkpoints", "log_every_steps")
    )
    if o.prompt_pool < o.num_prompts:
        raise ValueError(
            f"config.online.prompt_pool={o.prompt_pool} < online.num_prompts={o.num_prompts}"
        )
    family = losses.available().get(config.loss)
    preference = o.algorithm in PAIRWISE
    want = ("preference",) if preference else PG_FAMILIES
    if family not in want:
        raise ValueError(
            f"config.loss={config.loss!r} is a {family} loss; online.algorithm={o.algorithm!r} "
            f"needs a {want[0]} loss"
        )
    if preference:
        if o.group_size < 2:
            raise ValueError(
                f"online.algorithm={o.algorithm!r} builds pairs: online.group_size must be >= 2, "
                f"got {o.group_size}"
            )
        if o.label not in LABELS:
            raise ValueError(f"config.online.label must be one of {LABELS}, got {o.label!r}")
        if o.pairing not in pairs_lib.STRATEGIES:
            raise ValueError(
                f"config.online.pairing must be one of {pairs_lib.STRATEGIES}, got {o.pairing!r}"
            )
        check_positive(o, ("pairs_per_group",), prefix="config.online")
        if o.pairing == "best_vs_worst" and o.pairs_per_group != 1:
            raise ValueError(
                f"online.pairing='best_vs_worst' makes one pair per group: online.pairs_per_group "
                f"must be 1, got {o.pairs_per_group}"
            )
        if not (0.0 <= o.offline_fraction < 1.0) or o.pair_margin < 0:
            raise ValueError(
                f"config.online.offline_fraction must lie in [0, 1) and online.pair_margin be >= 0 "
                f"(got {o.offline_fraction}, {o.pair_margin}): at least one prompt per step is "
                "sampled online"
            )
        if o.implicit_labels not in IMPLICIT_LABELS:
            raise ValueError(
                f"config.online.implicit_labels must be one of {IMPLICIT_LABELS}, "
                f"got {o.implicit_labels!r}"
            )
        if o.offline_label not in OFFLINE_LABELS:
            raise ValueError(
                f"config.online.offline_label must be one of {OFFLINE_LABELS}, got {o.offline_label!r}"
            )
        n_off, n_on, rows = preference_rows(o)
        if n_on < 1:
            raise ValueError(
                f"online.offline_fraction={o.offline_fraction} leaves no sampled prompt of the "
                f"{o.num_prompts} per step"
            )
    else:
        if o.advantage not in ADVANTAGES:
            raise ValueError(
                f"config.online.advantage must be one of {ADVANTAGES}, got {o.advantage!r}"
            )
        needs_gae = o.algorithm in ("ppo", "sr_ppo")
        if needs_gae != (o.advantage == "gae") or needs_gae != (config.loss == "ppo"):
            raise ValueError(
                f"online.algorithm={o.algorithm!r}: PPO / SR-PPO use loss 'ppo' with "
                f"advantage 'gae', the others a critic-free loss and advantage; got loss="
                f"{config.loss!r}, advantage={o.advantage!r}"
            )
        if o.advantage in ("group", "rloo") and o.group_size < 2:
            raise ValueError(
                f"online.advantage={o.advantage!r} needs online.group_size >= 2, got {o.group_size}"
            )
        rows = o.num_prompts * o.group_size
    if rows % o.num_minibatches:
        raise ValueError(
            f"the {rows} training rows per step ({'pairs' if preference else 'samples'}) do not "
            f"split into online.num_minibatches={o.num_minibatches}: the group size / number of "
            "prompts must divide evenly"
        )
    if o.kl_coef < 0 or o.temperature <= 0:
        raise ValueError(
            f"config.online.kl_coef must be >= 0 and online.temperature > 0 (got {o.kl_coef}, "
            f"{o.temperature}); on-policy log-probs need temperature sampling"
        )
    if o.temperature != 1.0 or o.top_k or o.top_p < 1.0:
        log.warning(
            "online: temperature=%s top_k=%s top_p=%s: old log-probs are those of the raw policy, "
            "not of the reshaped sampling distribution",
            o.temperature,
            o.top_k,
            o.top_p,
        )
    if o.log_ratio_reward not in LOG_RATIO_REWARDS:
        raise ValueError(
            f"config.online.log_ratio_reward must be one of {LOG_RATIO_REWARDS}, "
            f"got {o.log_ratio_reward!r}"
        )
    if o.algorithm == "sr_ppo" and not config.reward.base_path and not o.random_base:
        raise ValueError(
            "online.algorithm='sr_ppo' needs pi_base: set reward.base_path to the base policy's "
            "Hugging Face folder (online.random_base=True takes a random init instead, for tests "
            "and tiny runs only)"
        )
    if o.algorithm == "sr_ppo" and not (
        config.reward.kind == "log_ratio" and not config.reward.path
    ):
        raise ValueError(
            "online.algorithm='sr_ppo' scores with reward.kind='log_ratio' and an empty reward.path "
            "(log pi_sft is the starting policy; reward.base_path is pi_base)"
        )
    if config.reward.kind == "log_ratio" and not config.reward.path and o.algorithm != "sr_ppo":
        raise ValueError(
            "reward.kind='log_ratio' with an empty reward.path is Self-Rewarding PPO only "
            "(online.algorithm='sr_ppo'); give reward.path otherwise"
        )
    if o.algorithm != "sr_ppo":
        rewards.check_reward_config(config.reward)
    optim.make_schedule(config.optim, num_updates(config))


def preference_rows(o) -> tuple[int, int, int]:
    """(dataset pairs, sampled prompts, pair slots) per step of a preference learner: of the
    `num_prompts` prompts, round(offline_fraction * num_prompts) bring a dataset pair, the others
    `group_size` samples and `pairs_per_group` pair slots."""
    n_off = int(round(o.offline_fraction * o.num_prompts))
    n_on = o.num_prompts - n_off
    return n_off, n_on, n_off + n_on * o.pairs_per_group


def num_updates(config) -> int:
    o = config.online
    return config.num_train_steps * o.ppo_epochs * o.num_minibatches


# ----------------------------------------------------------------------------- prompts


class PromptStream:
    """Walks a fixed pool (the task's train prompts, or dataset pair indices) in a seeded order,
    reshuffled every pass. Its position (`cursor`) is the whole iterator state."""

    def __init__(self, pool, seed: int, cursor: int = 0):
        self.pool = list(pool)
        self.seed, self.cursor = seed, cursor

    def next(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            epoch, i = divmod(self.cursor, len(self.pool))
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.pool))
            out.append(self.pool[order[i]])
            self.cursor += 1
        return out


# ----------------------------------------------------------------------------- set-up and rollout


@dataclasses.dataclass
class Rollout:
    """One step's samples: `batch` the host rollout batch (`rollout.assemble`), `dev` its
    `input_ids` / `attention_mask` / `loss_mask` as global arrays, `ref_logps` [N, T] of the
    frozen reference, `seq_old`, `seq_ref`, `seq_kl` [N] sequence sums, the decoded responses,
    the task's `gold` rewards [N] and the configured reward's `train_reward` [N] (None for
    Self-Rewarding PPO, whose reward the loop computes)."""

    prompts: list[str]
    prompt_ids: list[list[int]]
    batch: dict[str, np.ndarray]
    dev: dict[str, jax.Array]
    tokens: np.ndarray
    lengths: np.ndarray
    ref_logps: np.ndarray
    seq_old: np.ndarray
    seq_ref: np.ndarray
    seq_kl: np.ndarray
    texts: list[str]
    response_ids: list[list[int]]
    ended: np.ndarray
    gold: np.ndarray
    train_reward: np.ndarray | None
    gen_time: float

    @property
    def mask(self) -> np.ndarray:
        return self.batch["loss_mask"]


@dataclasses.dataclass
class OnlineRun:
    """The run context plus what both online loops build the same way."""

    ctx: engine.RunContext
    task: Any
    ref_params: Any
    sampler: Callable
    forward: Callable
    reward_fn: Callable | None
    pad: int
    key0: jax.Array

    def resume(self, state, state_shardings):
        """Restores the newest intact checkpoint, if any, and starts the metrics log. Returns
        `(state, data_state, prompt stream, last finished step)`; `data_state` is {} on a fresh run."""
        config = self.ctx.config
        o = config.online
        state, data_state = self.ctx.restore(state, state_shardings)
        data_state = data_state or {}
        stream = PromptStream(
            self.task.prompts("train", o.prompt_pool, config.seed),
            config.seed,
            int(data_state.get("prompt_cursor", 0)),
        )
        # the step counter counts optimizer updates; the online step is updates / (epochs x minibatches)
        start = int(state.step) // (o.ppo_epochs * o.num_minibatches)
        self.ctx.start_metrics(start)
        return state, data_state, stream, start

    def rollout(self, step_no: int, prompts: list[str], params) -> Rollout:
        """Samples `prompts` (already repeated per group) from `params`, the learner's own buffers,
        with the step's key, then scores the samples (steps 2-4 of the module docstring)."""
        config, mesh, tokenizer = self.ctx.config, self.ctx.mesh, self.ctx.tokenizer
        o = config.online
        p_ids, p_mask, p_lists = rollout.encode_prompt_batch(
            tokenizer,
            prompts,
            chat_template=config.data.chat_template,
            max_prompt_len=o.max_prompt_len,
        )
        rows_sh = sharding.batch_sharding(mesh, 2)
        t0 = time.perf_counter()
        sample = self.sampler(
            params,
            jax.device_put(p_ids, rows_sh),
            jax.device_put(p_mask, rows_sh),
            jax.random.fold_in(self.key0, step_no),
        )
        tokens, logprobs, lengths = jax.device_get((sample.tokens, sample.logprobs, sample.lengths))
        gen_time = time.perf_counter() - t0
        batch_np = rollout.assemble(p_ids, p_mask, tokens, logprobs, lengths, self.pad)
        mask = batch_np["loss_mask"]
        dev = engine.to_global(
            {k: batch_np[k] for k in ("input_ids", "attention_mask", "loss_mask")},
            engine.batch_shardings_for(batch_np, mesh),
        )
        ref_logps = np.asarray(
            self.forward(self.ref_params, dev["input_ids"], dev["attention_mask"], dev["loss_mask"])
        )
        seq_old = rollout.sequence_sums(batch_np["old_logps"], mask)
        seq_ref = rollout.sequence_sums(ref_logps, mask)
        texts, resp_ids, ended = rollout.decode_responses(tokenizer, tokens, lengths)
        gold = self.task.gold_rewards(prompts, texts)
        train_reward = None
        if self.reward_fn is not None:
            train_reward = self.reward_fn(RewardInputs(prompts, texts, p_lists, resp_ids))
        return Rollout(
            prompts=prompts,
            prompt_ids=p_lists,
            batch=batch_np,
            dev=dev,
            tokens=tokens,
            lengths=lengths,
            ref_logps=ref_logps,
            seq_old=seq_old,
            seq_ref=seq_ref,
            seq_kl=seq_old - seq_ref,
            texts=texts,
            response_ids=resp_ids,
            ended=ended,
            gold=gold,
            train_reward=train_reward,
            gen_time=gen_time,
        )


def rollout_metrics(r: Rollout, train_reward: np.ndarray) -> dict[str, float]:
    """The per-step metrics every online learner logs about its samples."""
    return dict(
        reward_mean=float(r.gold.mean()),
        reward_std=float(r.gold.std()),
        train_reward_mean=float(np.mean(train_reward)),
        train_reward_std=float(np.std(train_reward)),
        kl=float(r.seq_kl.mean()),
        response_length=float(r.lengths.mean()),
        eos_fraction=float(r.ended.mean()),
        gen_tokens_per_s=float(r.lengths.sum()) / max(r.gen_time, 1e-9),
        gen_time_s=r.gen_time,
    )


def open_online(
    config, workdir: str, *, rows_per_step: int, rows_per_minibatch: int, extra_rows: int = 0
) -> OnlineRun:
    """The engine's run context for an online config plus its task, frozen reference, sampler,
    reference forward and reward. The row counts (samples per step, rows per minibatch, dataset
    responses) must divide over the batch-sharded mesh axes."""
    o = config.online
    ctx = engine.open_run(config, workdir)
    try:
        shards = ctx.mesh.shape["data"] * ctx.mesh.shape["fsdp"]
        if rows_per_step % shards or rows_per_minibatch % shards or extra_rows % shards:
            raise ValueError(
                f"online: {rows_per_step} samples per step, minibatches of {rows_per_minibatch} rows "
                f"and {extra_rows} dataset responses must divide over mesh data x fsdp = {shards} "
                "devices; change online.num_prompts / group_size / num_minibatches / "
                "offline_fraction or config.mesh"
            )
        if o.max_prompt_len + o.max_new_tokens > ctx.model_config.max_seq_len:
            raise ValueError(
                f"online.max_prompt_len + max_new_tokens = {o.max_prompt_len + o.max_new_tokens} "
                f"exceeds the model's max_seq_len={ctx.model_config.max_seq_len}"
            )
        task = tasks.get_task(o.task, **o.task_kwargs.to_dict())
        ctx.write_record(
            task_kwargs=o.task_kwargs.to_dict()
        )  # experiments.evaluate rebuilds the same task
        tokenizer = ctx.tokenizer
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        sampler = rollout.make_sampler(
            ctx.graphdef,
            max_new_tokens=o.max_new_tokens,
            temperature=o.temperature,
            top_k=o.top_k,
            top_p=o.top_p,
            stop_ids=(tokenizer.eos_id,),
            pad_id=pad,
        )
        forward = rollout.make_forward(ctx.graphdef, config.model.logprob_chunk_size)
        reward_fn = None
        if o.algorithm != "sr_ppo":
            reward_fn, _ = rollout.make_reward(
                config.reward, task=task, tokenizer=tokenizer, mesh=ctx.mesh
            )
        return OnlineRun(
            ctx=ctx,
            task=task,
            ref_params=ctx.reference_params(),
            sampler=sampler,
            forward=forward,
            reward_fn=reward_fn,
            pad=pad,
            key0=jax.random.PRNGKey(config.seed),
        )
    except BaseException:
        ctx.close()
        raise


def make_optimizer(config, params):
    """`(tx, schedule)` over all optimizer updates of the run (steps x epochs x minibatches)."""
    return (
        optim.make_optimizer(config.optim, params, num_updates(config)),
        optim.make_schedule(config.optim, num_updates(config)),
    )


def update(
    run: OnlineRun, state, train_np: dict[str, np.ndarray], *, step_no: int, train_step, make_step
):
    """`online.ppo_epochs` passes of `online.num_minibatches` shuffled minibatches of `train_np`,
    one jitted update each. `train_step` is the compiled step or None (built by
    `make_step(batch_shardings=...)` on first use, e.g. a partial of `engine.make_train_step`).
    Returns `(state, train_step, device metrics of each update, train tokens, seconds)`."""
    config, mesh = run.ctx.config, run.ctx.mesh
    o = config.online
    t1 = time.perf_counter()
    step_ms, train_tokens = [], 0.0
    mb_rng = np.random.default_rng([config.seed, step_no])
    for _ in range(o.ppo_epochs):
        for mb in rollout.minibatches(train_np, o.num_minibatches, mb_rng):
            b_sh = engine.batch_shardings_for(mb, mesh)
            if train_step is None:
                train_step = make_step(batch_shardings=b_sh)
            state, mm = train_step(state, engine.to_global(mb, b_sh))
            step_ms.append(mm)
            train_tokens += float(
                sum(np.sum(v) for k, v in mb.items() if k.endswith("attention_mask"))
            )
    step_ms = jax.block_until_ready(step_ms)
    return state, train_step, step_ms, train_tokens, time.perf_counter() - t1


def mean_metrics(step_metrics) -> dict[str, float]:
    """Host means, key by key, of the device metrics of a step's updates."""
    rows = [metrics_lib.to_host(m) for m in jax.device_get(list(step_metrics))]
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
