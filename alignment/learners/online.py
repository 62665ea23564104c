"""The online loop: sample -> score -> advantages (or pairs) -> K epochs of minibatch updates.

    python -m experiments.train --config configs/grpo.py:tiny --workdir /tmp/grpo

`alignment.train.train` hands configs with `kind == "online"` to `train_online`. Each step:

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

import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from alignment import checkpoint as ckpt_lib
from alignment import metrics as metrics_lib
from alignment import optim, sharding
from alignment.learners import pairs as pairs_lib
from alignment.learners import pg, rollout
from alignment.learners.online_pairs import (dataset_pairs, dataset_step, encode_dataset_pairs, pair_slots,
                                             preference_batch, weighted_pair_loss)
from alignment.learners.validation import check_positive
from alignment.rewards.base import RewardInputs

log = logging.getLogger(__name__)

ALGORITHMS = ("ppo", "grpo", "sr_ppo", "online_dpo", "sail")
ADVANTAGES = ("group", "group_mean", "rloo", "gae")
LABELS = ("reward", "implicit")
OFFLINE_LABELS = ("dataset", "implicit")
LOG_RATIO_REWARDS = ("sum", "token_mean")
PG_FAMILIES = ("policy_gradient",)


# ----------------------------------------------------------------------------- validation

def validate_online(config) -> None:
    """Semantic checks across keys, before anything is built; each error names the key."""
    from alignment import losses, tasks
    o = config.online
    if o.algorithm not in ALGORITHMS:
        raise ValueError(f"config.online.algorithm must be one of {ALGORITHMS}, got {o.algorithm!r}")
    if o.task not in tasks.available():
        raise ValueError(f"config.online.task={o.task!r} is not an embedded task; available: {tasks.available()}")
    check_positive(o, ("num_prompts", "group_size", "max_prompt_len", "max_new_tokens", "ppo_epochs",
                       "num_minibatches", "prompt_pool"), prefix="config.online")
    check_positive(config, ("num_train_steps", "checkpoint_every_steps", "keep_checkpoints", "log_every_steps"))
    if o.prompt_pool < o.num_prompts:
        raise ValueError(f"config.online.prompt_pool={o.prompt_pool} < online.num_prompts={o.num_prompts}")
    family = losses.available().get(config.loss)
    preference = o.algorithm in ("online_dpo", "sail")
    want = ("preference",) if preference else PG_FAMILIES
    if family not in want:
        raise ValueError(f"config.loss={config.loss!r} is a {family} loss; online.algorithm={o.algorithm!r} "
                         f"needs a {want[0]} loss")
    if preference:
        if o.group_size < 2:
            raise ValueError(f"online.algorithm={o.algorithm!r} builds pairs: online.group_size must be >= 2, "
                             f"got {o.group_size}")
        if o.label not in LABELS:
            raise ValueError(f"config.online.label must be one of {LABELS}, got {o.label!r}")
        if o.pairing not in pairs_lib.STRATEGIES:
            raise ValueError(f"config.online.pairing must be one of {pairs_lib.STRATEGIES}, got {o.pairing!r}")
        check_positive(o, ("pairs_per_group",), prefix="config.online")
        if o.pairing == "best_vs_worst" and o.pairs_per_group != 1:
            raise ValueError(f"online.pairing='best_vs_worst' makes one pair per group: online.pairs_per_group "
                             f"must be 1, got {o.pairs_per_group}")
        if not (0.0 <= o.offline_fraction < 1.0) or o.pair_margin < 0:
            raise ValueError(f"config.online.offline_fraction must lie in [0, 1) and online.pair_margin be >= 0 "
                             f"(got {o.offline_fraction}, {o.pair_margin}): at least one prompt per step is "
                             "sampled online")
        if o.offline_label not in OFFLINE_LABELS:
            raise ValueError(f"config.online.offline_label must be one of {OFFLINE_LABELS}, got {o.offline_label!r}")
        n_off, n_on, rows = preference_rows(o)
        if n_on < 1:
            raise ValueError(f"online.offline_fraction={o.offline_fraction} leaves no sampled prompt of the "
                             f"{o.num_prompts} per step")
    else:
        if o.advantage not in ADVANTAGES:
            raise ValueError(f"config.online.advantage must be one of {ADVANTAGES}, got {o.advantage!r}")
        needs_gae = o.algorithm in ("ppo", "sr_ppo")
        if needs_gae != (o.advantage == "gae") or needs_gae != (config.loss == "ppo"):
            raise ValueError(f"online.algorithm={o.algorithm!r}: PPO / SR-PPO use loss 'ppo' with "
                             f"advantage 'gae', the others a critic-free loss and advantage; got loss="
                             f"{config.loss!r}, advantage={o.advantage!r}")
        if o.advantage in ("group", "rloo") and o.group_size < 2:
            raise ValueError(f"online.advantage={o.advantage!r} needs online.group_size >= 2, got {o.group_size}")
        rows = o.num_prompts * o.group_size
    if rows % o.num_minibatches:
        raise ValueError(f"the {rows} training rows per step ({'pairs' if preference else 'samples'}) do not "
                         f"split into online.num_minibatches={o.num_minibatches}: the group size / number of "
                         "prompts must divide evenly")
    if o.kl_coef < 0 or o.temperature <= 0:
        raise ValueError(f"config.online.kl_coef must be >= 0 and online.temperature > 0 (got {o.kl_coef}, "
                         f"{o.temperature}); on-policy log-probs need temperature sampling")
    if o.temperature != 1.0 or o.top_k or o.top_p < 1.0:
        log.warning("online: temperature=%s top_k=%s top_p=%s: old log-probs are those of the raw policy, "
                    "not of the reshaped sampling distribution", o.temperature, o.top_k, o.top_p)
    if o.log_ratio_reward not in LOG_RATIO_REWARDS:
        raise ValueError(f"config.online.log_ratio_reward must be one of {LOG_RATIO_REWARDS}, "
                         f"got {o.log_ratio_reward!r}")
    if o.algorithm == "sr_ppo" and not (config.reward.kind == "log_ratio" and not config.reward.path):
        raise ValueError("online.algorithm='sr_ppo' scores with reward.kind='log_ratio' and an empty reward.path "
                         "(log pi_sft is the starting policy; reward.base_path is pi_base)")
    if config.reward.kind == "log_ratio" and not config.reward.path and o.algorithm != "sr_ppo":
        raise ValueError("reward.kind='log_ratio' with an empty reward.path is Self-Rewarding PPO only "
                         "(online.algorithm='sr_ppo'); give reward.path otherwise")
    if o.algorithm != "sr_ppo":
        from alignment import rewards
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


# ----------------------------------------------------------------------------- models

def _load_policy(config, tokenizer, mesh, workdir):
    from alignment import train as T
    if config.model.init_from:
        graphdef, params, shardings, model_cfg = T.load_params(config.model.init_from, config.model, mesh)
        return graphdef, params, shardings, model_cfg, os.path.abspath(config.model.init_from)
    model_cfg = T.model_config(config, tokenizer.vocab_size)
    graphdef, params, shardings = T.init_params(model_cfg, mesh, config.seed)
    reference = os.path.join(workdir, "reference_hf") if config.export_hf else ""
    if config.export_hf and not os.path.isfile(os.path.join(reference, "config.json")):
        ckpt_lib.export_hf(graphdef, params, reference, tokenizer=tokenizer)
    return graphdef, params, shardings, model_cfg, reference


def _load_base(config, model_cfg, mesh):
    """pi_base of Self-Rewarding PPO: `reward.base_path` (an HF folder), or for tests and tiny runs
    a random init of the policy's architecture with seed `config.seed + 1`."""
    from alignment import train as T
    if config.reward.base_path:
        graphdef, params, _, _ = T.load_params(config.reward.base_path, config.model, mesh)
        return graphdef, params
    graphdef, params, _ = T.init_params(model_cfg, mesh, config.seed + 1)
    return graphdef, params


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


# ----------------------------------------------------------------------------- the loop

def train_online(config, workdir: str):
    """Runs (or resumes) an online config in `workdir`; returns the final train state."""
    from alignment import losses, tasks
    from alignment import train as T
    validate_online(config)
    T.init_distributed(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    o = config.online
    mesh = sharding.make_mesh(config.mesh.to_dict())
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    preference = o.algorithm in ("online_dpo", "sail")
    n_off, n_on, n_pairs = preference_rows(o) if preference else (0, o.num_prompts, 0)
    n_rows = n_on * o.group_size
    mb_rows = (n_pairs if preference else n_rows) // o.num_minibatches
    if n_rows % shards or mb_rows % shards or (2 * n_off) % shards:
        raise ValueError(f"online: {n_rows} samples per step, minibatches of {mb_rows} rows and {2 * n_off} dataset "
                         f"responses must divide over mesh data x fsdp = {shards} devices; change online.num_prompts "
                         "/ group_size / num_minibatches / offline_fraction or config.mesh")
    tokenizer = T.make_tokenizer(config.tokenizer)
    task = tasks.get_task(o.task, **o.task_kwargs.to_dict())
    pi = jax.process_index()

    graphdef, params, shardings, model_cfg, reference = _load_policy(config, tokenizer, mesh, workdir)
    if o.max_prompt_len + o.max_new_tokens > model_cfg.max_seq_len:
        raise ValueError(f"online.max_prompt_len + max_new_tokens = {o.max_prompt_len + o.max_new_tokens} exceeds "
                         f"the model's max_seq_len={model_cfg.max_seq_len}")
    if pi == 0:
        record = T.run_record(config, workdir, reference)
        record["task_kwargs"] = o.task_kwargs.to_dict()  # experiments.evaluate rebuilds the same task
        ckpt_lib.write_run_record(workdir, record)
    ref_params = jax.tree.map(jnp.copy, params)  # frozen: the step donates the live parameters
    base = _load_base(config, model_cfg, mesh) if o.algorithm == "sr_ppo" else None
    with_values = o.advantage == "gae" and not preference
    if with_values:
        rep = sharding.replicated(mesh)
        params = {"policy": params, "value_head": jax.device_put(pg.init_value_head(model_cfg.d_model), rep)}
        shardings = {"policy": shardings, "value_head": {"w": rep, "b": rep}}
    policy_of = (lambda p: p["policy"]) if with_values else (lambda p: p)

    tx = optim.make_optimizer(config.optim, params, num_updates(config))
    schedule = optim.make_schedule(config.optim, num_updates(config))
    state, st_shardings = T.create_train_state(params, shardings, tx, mesh, seed=config.seed, with_reference=False)
    del params
    loss = losses.get(config.loss)
    kwargs = config.loss_kwargs.to_dict()
    chunk = config.model.logprob_chunk_size
    if preference:
        logprob_fn = T.make_logprob_fn(graphdef, chunk)
        loss_fn = lambda p, ref, b: weighted_pair_loss(  # noqa: E731
            logprob_fn, p, b, loss_fn=loss, loss_kwargs=kwargs)
    else:
        loss_fn = pg.make_pg_loss(graphdef, loss=loss, loss_kwargs=kwargs, with_values=with_values,
                                  chunk_size=chunk, value_trunk_grad=o.value_trunk_grad,
                                  use_entropy=float(kwargs.get("entropy_coef", 0.0)) != 0.0)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    sampler = rollout.make_sampler(graphdef, max_new_tokens=o.max_new_tokens, temperature=o.temperature,
                                   top_k=o.top_k, top_p=o.top_p, stop_ids=(tokenizer.eos_id,), pad_id=pad)
    forward = rollout.make_forward(graphdef, chunk)
    value_fn = pg.make_value_fn(graphdef, chunk) if with_values else None
    reward_fn, reward_name = (None, "log_ratio") if o.algorithm == "sr_ppo" else rollout.make_reward(
        config.reward, task=task, tokenizer=tokenizer, mesh=mesh)

    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                         every_steps=config.checkpoint_every_steps,
                                         keep=config.keep_checkpoints, async_save=config.checkpoint_async)
    cursor = off_cursor = 0
    latest = checkpointer.latest_step()
    if latest is not None:
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, st_shardings)
        state, data_states = checkpointer.restore(latest, abstract)
        data_state = ckpt_lib.local_data_state(data_states)
        cursor, off_cursor = int(data_state["prompt_cursor"]), int(data_state["offline_cursor"])
        log.info("resumed from step %d in %s", latest, workdir)
    prompts_stream = PromptStream(task.prompts("train", o.prompt_pool, config.seed), config.seed, cursor)
    if n_off:
        # a disjoint seed: dataset pairs need not share prompts with the sampled ones
        ds_rows, ds_skipped = dataset_pairs(task, o.prompt_pool, config.seed + 7919)
        ds = encode_dataset_pairs(tokenizer, ds_rows, chat_template=config.data.chat_template,
                                  max_prompt_len=o.max_prompt_len, max_new_tokens=o.max_new_tokens, pad=pad)
        log.info("online: %d dataset pairs (%d prompts skipped: tied gold scores), %d per step, labels: %s",
                 len(ds_rows), ds_skipped, n_off, o.offline_label)
    offline_stream = PromptStream(range(len(ds_rows)) if n_off else [], config.seed + 1, off_cursor)
    # the step counter counts optimizer updates; the online step is updates / (epochs x minibatches)
    start = int(state.step) // (o.ppo_epochs * o.num_minibatches)
    writer = metrics_lib.MetricsWriter(workdir, total_steps=config.num_train_steps, start_step=start,
                                       enabled=pi == 0, tensorboard=config.tensorboard,
                                       progress=None if config.progress_bar else False)
    train_step = None
    key0 = jax.random.PRNGKey(config.seed)
    try:
        for step_no in range(start + 1, config.num_train_steps + 1):
            m: dict[str, float] = {}
            # --- 1-2. prompts and samples
            prompts = [p for p in prompts_stream.next(n_on) for _ in range(o.group_size)]
            p_ids, p_mask, p_lists = rollout.encode_prompt_batch(
                tokenizer, prompts, chat_template=config.data.chat_template, max_prompt_len=o.max_prompt_len)
            rows_sh = sharding.batch_sharding(mesh, 2)
            t0 = time.perf_counter()
            sample = sampler(policy_of(state.params), jax.device_put(p_ids, rows_sh),
                             jax.device_put(p_mask, rows_sh), jax.random.fold_in(key0, step_no))
            tokens, logprobs, lengths = jax.device_get((sample.tokens_BxN, sample.logprobs_BxN, sample.lengths_B))
            gen_time = time.perf_counter() - t0
            batch_np = rollout.assemble(p_ids, p_mask, tokens, logprobs, lengths, pad)
            mask = batch_np["loss_mask"]
            dev = T.to_global({k: batch_np[k] for k in ("input_ids", "attention_mask", "loss_mask")},
                              T.batch_shardings_for(batch_np, mesh))
            # --- 3. frozen models
            ref_logps = np.asarray(forward(ref_params, dev["input_ids"], dev["attention_mask"], dev["loss_mask"]))
            seq_old = rollout.sequence_sums(batch_np["old_logps"], mask)
            seq_ref = rollout.sequence_sums(ref_logps, mask)
            seq_kl = seq_old - seq_ref
            # --- 4. rewards
            texts, resp_ids, ended = rollout.decode_responses(tokenizer, tokens, lengths)
            gold = task.gold_rewards(prompts, texts)
            if o.algorithm == "sr_ppo":
                base_logps = np.asarray(forward(base[1], dev["input_ids"], dev["attention_mask"], dev["loss_mask"]))
                train_reward = seq_ref - rollout.sequence_sums(base_logps, mask)  # log pi_sft - log pi_base
                if o.log_ratio_reward == "token_mean":  # removes the sum's pull towards long responses
                    train_reward = train_reward / np.maximum(mask.sum(-1), 1).astype(np.float32)
            else:
                train_reward = reward_fn(RewardInputs(prompts, texts, p_lists, resp_ids))
            # --- 5. the learner's batch
            if preference:
                if o.label == "reward":
                    scores = train_reward
                else:  # the same forward as the reference, so pi == ref gives exact ties, not float noise
                    pol = np.asarray(forward(state.params, dev["input_ids"], dev["attention_mask"], dev["loss_mask"]))
                    scores = o.implicit_beta * (rollout.sequence_sums(pol, mask) - seq_ref)
                chosen, rejected, weight, stats = pair_slots(scores, o.group_size, strategy=o.pairing,
                                                             pairs_per_group=o.pairs_per_group,
                                                             seed=[config.seed, step_no], margin=o.pair_margin)
                train_np = preference_batch(batch_np, seq_ref, chosen, rejected, weight)
                m.update(pairs_per_step=stats["pairs"], pair_ties=stats["pair_ties"],
                         groups_without_pair=stats["groups_without_pair"], pair_margin=stats["pair_margin_mean"])
                if n_off:
                    off = dataset_step(ds, offline_stream.next(n_off), o, forward=forward,
                                        params=state.params, ref_params=ref_params, mesh=mesh)
                    m.update(off.pop("metrics"))
                    train_np = {k: np.concatenate([train_np[k], off[k]]) for k in train_np}
                # no per-token entropy in a preference step: the sample estimate -E[log pi(y_t)]
                m["entropy"] = float(-batch_np["old_logps"].sum() / max(mask.sum(), 1))
            elif o.advantage == "gae":
                old_values = np.asarray(value_fn(state.params, dev["input_ids"], dev["attention_mask"],
                                                 dev["loss_mask"]))
                adv, returns = pg.ppo_advantages(
                    terminal_rewards_B=train_reward, old_logps_BxT=batch_np["old_logps"], ref_logps_BxT=ref_logps,
                    values_BxT=old_values, mask_BxT=mask, kl_coef=o.kl_coef, gamma=o.gamma, lam=o.lam,
                    whiten=o.whiten_advantages)
                train_np = dict(batch_np, advantages=np.asarray(adv), returns=np.asarray(returns),
                                old_values=old_values)
            else:
                shaped = train_reward - o.kl_coef * seq_kl  # KL in the reward (RLOO); 0 for GRPO
                kind = {"group": "group", "group_mean": "group", "rloo": "rloo"}[o.advantage]
                adv = rollout.group_advantages(shaped, kind=kind, group_size=o.group_size,
                                               use_std=o.advantage == "group")
                train_np = dict(batch_np, advantages=adv)
                if kwargs.get("aggregation") == "dapo":
                    train_np["num_tokens"] = np.full((n_rows,), float(mask.sum()) / o.num_minibatches, np.float32)
            if not preference and float(kwargs.get("beta", 0.0)) > 0:
                train_np["ref_logps"] = ref_logps  # KL in the loss (GRPO's k3)
            # --- 6. K epochs of minibatch updates
            t1 = time.perf_counter()
            step_ms, train_tokens = [], 0.0
            mb_rng = np.random.default_rng([config.seed, step_no])
            for _ in range(o.ppo_epochs):
                for mb in rollout.minibatches(train_np, o.num_minibatches, mb_rng):
                    b_sh = T.batch_shardings_for(mb, mesh)
                    if train_step is None:
                        train_step = T.make_train_step(loss_fn, tx, state_shardings=st_shardings, batch_shardings=b_sh,
                                                       mesh=mesh, schedule=schedule)
                    state, mm = train_step(state, T.to_global(mb, b_sh))
                    step_ms.append(mm)
                    train_tokens += float(sum(np.sum(v) for k, v in mb.items() if k.endswith("attention_mask")))
            step_ms = [metrics_lib.to_host(x) for x in jax.device_get(step_ms)]
            train_time = time.perf_counter() - t1
            # --- metrics
            for k in step_ms[0]:
                m[k] = float(np.mean([x[k] for x in step_ms]))
            m.update(reward_mean=float(gold.mean()), reward_std=float(gold.std()),
                     train_reward_mean=float(np.mean(train_reward)), train_reward_std=float(np.std(train_reward)),
                     kl=float(seq_kl.mean()), response_length=float(lengths.mean()),
                     eos_fraction=float(ended.mean()),
                     gen_tokens_per_s=float(lengths.sum()) / max(gen_time, 1e-9),
                     train_tokens_per_s=train_tokens / max(train_time, 1e-9),
                     gen_time_s=gen_time, train_time_s=train_time)
            if not preference:
                m.setdefault("clip_fraction", 0.0)  # reinforce without clipping never clips
            metrics_lib.check_finite(m, step_no)
            if step_no % config.log_every_steps == 0 or step_no == config.num_train_steps:
                writer.write(step_no, m)
            if checkpointer.should_save(step_no) or step_no == config.num_train_steps:
                checkpointer.save(step_no, state, ckpt_lib.gather_data_states(
                    {"prompt_cursor": prompts_stream.cursor, "offline_cursor": offline_stream.cursor}))
    finally:
        checkpointer.close()
        writer.close()
    if config.export_hf:
        ckpt_lib.export_hf(graphdef, policy_of(state.params), os.path.join(workdir, "hf"), tokenizer=tokenizer)
    return state
