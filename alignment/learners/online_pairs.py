"""The pairwise online loop (online DPO, SAIL) and its pieces: pair slots from sampled groups,
the weighted pair loss, and dataset pairs mixed in (SAIL-DP's relabelling by the policy).

    train_pairs(config, workdir)     # the loop; `learners/online.py` describes each step

Every step's batch has a fixed number of pair slots (`alignment.learners.online.preference_rows`):
`pairs_per_group` per sampled prompt plus one per dataset pair. A slot without a pair (a group
whose samples all tie, a dataset pair the policy's implicit reward cannot order) holds a dummy
pair with weight 0; `weighted_pair_loss` gives it exactly zero gradient and the loop counts it.
"""

from __future__ import annotations

import functools
import logging

import jax.numpy as jnp
import numpy as np

from alignment import engine, losses
from alignment.data import task_pairs
from alignment.learners import offline, online, rollout
from alignment.learners import pairs as pairs_lib

log = logging.getLogger(__name__)


def pair_slots(
    scores: np.ndarray,
    group_size: int,
    *,
    strategy: str,
    pairs_per_group: int,
    seed,
    margin: float = 0.0,
):
    """(chosen rows [G*S], rejected rows [G*S], weight [G*S], stats) of `pairs.make_pairs` over
    `scores` [G*K] in groups of `group_size` contiguous samples, S = `pairs_per_group` fixed slots per group so the
    batch keeps its shape. Ties never become pairs: a slot left without a pair holds the group's
    first sample against itself with weight 0 (no gradient at all, counted in `stats`)."""
    g = np.asarray(scores, np.float64).reshape(-1, group_size)
    p = pairs_lib.make_pairs(
        g, strategy=strategy, seed=seed, margin=margin, max_pairs_per_group=pairs_per_group
    )
    n_groups = g.shape[0]
    first = np.repeat(np.arange(n_groups) * group_size, pairs_per_group)
    chosen, rejected = first.copy(), first.copy()
    weight = np.zeros(n_groups * pairs_per_group, np.float32)
    fc, fr = p.flat(group_size)
    used = np.zeros(n_groups, np.int64)
    for grp, c, r in zip(p.group, fc, fr):
        slot = grp * pairs_per_group + used[grp]
        chosen[slot], rejected[slot], weight[slot] = c, r, 1.0
        used[grp] += 1
    return chosen, rejected, weight, p.stats()


def preference_batch(batch_np, ref_logps, chosen, rejected, weight) -> dict[str, np.ndarray]:
    """The pair slots' preference batch: rows `chosen` / `rejected` of the rollout batch, their
    sequence reference log-probs from `ref_logps` [N] and `pair_weight`."""
    out = {"pair_weight": np.asarray(weight, np.float32)}
    for side, rows in (("chosen", chosen), ("rejected", rejected)):
        out[f"{side}_input_ids"] = batch_np["input_ids"][rows]
        out[f"{side}_attention_mask"] = batch_np["attention_mask"][rows]
        out[f"{side}_loss_mask"] = batch_np["loss_mask"][rows]
        out[f"ref_{side}_logps"] = ref_logps[rows]
    return out


def weighted_pair_loss(logprob_fn, params, batch, *, loss_fn, loss_kwargs):
    """A preference loss over fixed pair slots: `sum_p w_p l_p / max(sum_p w_p, 1)` with
    w = `batch["pair_weight"]` (0 on a slot without a pair: exactly zero gradient from it, SAIL's
    score-function term included); metrics are the same w-weighted means. Reference log-probs
    come precomputed in the batch. The loss must report its per-pair `losses`."""
    w_B = batch["pair_weight"].astype(jnp.float32)
    pc, pr, _, _ = offline.pair_logps(logprob_fn, params, batch)
    cm = batch["chosen_loss_mask"].astype(jnp.float32)
    rm = batch["rejected_loss_mask"].astype(jnp.float32)
    rc = batch["ref_chosen_logps"].astype(jnp.float32)
    rr = batch["ref_rejected_logps"].astype(jnp.float32)
    available = dict(
        policy_chosen_logps=pc,
        policy_rejected_logps=pr,
        ref_chosen_logps=rc,
        ref_rejected_logps=rr,
        chosen_lengths=jnp.sum(cm, -1),
        rejected_lengths=jnp.sum(rm, -1),
        chosen_mask=cm,
        rejected_mask=rm,
    )
    _, metrics = offline.call_loss(loss_fn, available, loss_kwargs)
    if "losses" not in metrics:
        raise ValueError(
            f"online preference learner: loss {loss_fn.__name__!r} does not report per-pair "
            "`losses`, needed to give pair slots without a pair zero weight"
        )
    n = jnp.maximum(jnp.sum(w_B), 1.0)
    mean = lambda x: jnp.sum(w_B * jnp.asarray(x, jnp.float32)) / n  # noqa: E731
    out = {
        k: mean(v)
        for k, v in metrics.items()
        if k != "losses"
        and not k.startswith("per_token")
        and jnp.ndim(v) == 1
        and v.shape[0] == w_B.shape[0]
    }
    if "chosen_rewards" in metrics:
        out["reward_accuracy"] = mean(metrics["chosen_rewards"] > metrics["rejected_rewards"])
    out.update(
        ranking_accuracy=mean(pc >= pr),
        logps_chosen=mean(pc),
        logps_rejected=mean(pr),
        policy_kl=0.5 * (mean(pc - rc) + mean(pr - rr)),
    )
    return mean(metrics["losses"]), n, out


# ----------------------------------------------------------------------------- dataset pairs


def dataset_pairs(task, n: int, seed: int) -> tuple[list[tuple[str, str, str]], int]:
    """(pairs, skipped): gold-labelled (prompt, chosen, rejected) for `n` train prompts of the
    loop's own task (its `task_kwargs` included), built like `data.source="task"` pairs
    (`alignment.data.task_pairs`: sorting's sorted demonstration vs a corrupted copy, sentiment's
    polarities, otherwise another prompt's demonstration); prompts whose two responses tie are
    skipped and counted."""
    demos = task.demonstrations("train", n, seed)
    rng = np.random.default_rng([seed, 0x4F46464C])  # "OFFL"
    out, skipped = [], 0
    for i, (prompt, demo) in enumerate(demos):
        others = [demo] + [demos[(i + j) % len(demos)][1] for j in range(1, min(len(demos), 8))]
        a, b, ga, gb = task_pairs.pair_for(task, prompt, rng, others)
        if ga == gb or a == b:
            skipped += 1
            continue
        out.append((prompt, a, b) if ga > gb else (prompt, b, a))
    if not out:
        raise ValueError(
            f"online.offline_fraction > 0: task {task.name!r} gave no dataset pair with different "
            f"gold scores for {n} train prompts"
        )
    return out, skipped


def encode_dataset_pairs(
    tokenizer, rows, *, chat_template: bool, max_prompt_len: int, max_new_tokens: int, pad: int
) -> dict[str, np.ndarray]:
    """`{chosen,rejected}_{input_ids,attention_mask,loss_mask}` [n, P + N] in the rollout layout
    (left-padded prompt, response + EOS as the sampler would have ended it)."""
    p_ids, p_mask, _ = rollout.encode_prompt_batch(
        tokenizer, [r[0] for r in rows], chat_template=chat_template, max_prompt_len=max_prompt_len
    )
    out = {}
    for side, col in (("chosen", 1), ("rejected", 2)):
        toks = np.full((len(rows), max_new_tokens), pad, np.int32)
        lens = np.zeros(len(rows), np.int32)
        for i, r in enumerate(rows):
            ids = list(tokenizer.encode(r[col], add_special_tokens=False)) + [tokenizer.eos_id]
            if len(ids) > max_new_tokens:
                raise ValueError(
                    f"online dataset pair {i}: the {side} response {r[col]!r} to {r[0]!r} has {len(ids)} "
                    f"tokens with EOS > online.max_new_tokens={max_new_tokens}; raise it"
                )
            toks[i, : len(ids)], lens[i] = ids, len(ids)
        b = rollout.assemble(p_ids, p_mask, toks, np.zeros(toks.shape, np.float32), lens, pad)
        for k in ("input_ids", "attention_mask", "loss_mask"):
            out[f"{side}_{k}"] = b[k]
    return out


def implicit_swaps(h: np.ndarray, *, labels: str, rng: np.random.Generator) -> np.ndarray:
    """Which pairs to swap, given `h` [n] = the implicit-reward margin `beta * (log pi/ref of the
    first - of the second)`: `labels="sampled"` (SAIL's self-labelling, as its gradient assumes
    and the authors' code draws) keeps the order with probability sigmoid(h), i.e. swaps with
    probability sigmoid(-h); `"argmax"` swaps exactly when h < 0."""
    if labels == "argmax":
        return h < 0
    return rng.random(h.shape[0]) < 1.0 / (1.0 + np.exp(h))


def dataset_step(ds, rows, o, *, forward, params, ref_params, mesh, rng=None) -> dict:
    """This step's dataset pairs in preference-batch form. `offline_label="implicit"` is SAIL-DP:
    each pair is relabelled by the current policy's implicit reward `beta * log(pi / ref)`
    (`implicit_swaps` with `online.implicit_labels`, drawing from `rng`; weight 0 on an exact
    tie, as at the start where pi == ref)."""
    rows = np.asarray(rows)
    n = len(rows)
    both = {
        k: np.concatenate([ds[f"chosen_{k}"][rows], ds[f"rejected_{k}"][rows]])
        for k in ("input_ids", "attention_mask", "loss_mask")
    }
    dev = engine.to_global(both, engine.batch_shardings_for(both, mesh))
    args = (dev["input_ids"], dev["attention_mask"], dev["loss_mask"])
    ref_seq = rollout.sequence_sums(np.asarray(forward(ref_params, *args)), both["loss_mask"])
    weight = np.ones(n, np.float32)
    swap = np.zeros(n, bool)
    if o.offline_label == "implicit":
        pol_seq = rollout.sequence_sums(np.asarray(forward(params, *args)), both["loss_mask"])
        implicit = o.implicit_beta * (pol_seq - ref_seq)
        h = implicit[:n] - implicit[n:]
        weight = (h != 0).astype(np.float32)
        swap = implicit_swaps(h, labels=o.implicit_labels, rng=rng) & (h != 0)
    c_idx = np.where(swap, np.arange(n) + n, np.arange(n))
    r_idx = np.where(swap, np.arange(n), np.arange(n) + n)
    out = {"pair_weight": weight}
    for side, idx in (("chosen", c_idx), ("rejected", r_idx)):
        for k in ("input_ids", "attention_mask", "loss_mask"):
            out[f"{side}_{k}"] = both[k][idx]
        out[f"ref_{side}_logps"] = ref_seq[idx]
    out["metrics"] = {
        "offline_pairs": float(weight.sum()),
        "offline_pair_ties": float(n - weight.sum()),
        "offline_flipped_fraction": float(swap.mean()),
    }
    return out


# ----------------------------------------------------------------------------- the loop


def train_pairs(config, workdir: str):
    """Runs (or resumes) a pairwise online config (`online.algorithm` online_dpo or sail) in
    `workdir`; returns the final train state."""
    o = config.online
    n_off, n_on, n_pairs = online.preference_rows(o)
    run = online.open_online(
        config,
        workdir,
        rows_per_step=n_on * o.group_size,
        rows_per_minibatch=n_pairs // o.num_minibatches,
        extra_rows=2 * n_off,
    )
    with run.ctx as ctx:
        tx, schedule = online.make_optimizer(config, ctx.params)
        state, st_shardings = ctx.create_state(tx)
        logprob_fn = engine.make_logprob_fn(ctx.graphdef, config.model.logprob_chunk_size)
        loss, kwargs = losses.get(config.loss), config.loss_kwargs.to_dict()

        def loss_fn(p, ref, b):
            return weighted_pair_loss(logprob_fn, p, b, loss_fn=loss, loss_kwargs=kwargs)

        state, data_state, prompts_stream, start = run.resume(state, st_shardings)
        metrics = ctx.metrics
        if n_off:
            # a disjoint seed: dataset pairs need not share prompts with the sampled ones
            ds_rows, ds_skipped = dataset_pairs(run.task, o.prompt_pool, config.seed + 7919)
            ds = encode_dataset_pairs(
                ctx.tokenizer,
                ds_rows,
                chat_template=config.data.chat_template,
                max_prompt_len=o.max_prompt_len,
                max_new_tokens=o.max_new_tokens,
                pad=run.pad,
            )
            log.info(
                "online: %d dataset pairs (%d prompts skipped: tied gold scores), %d per step, labels: %s",
                len(ds_rows),
                ds_skipped,
                n_off,
                o.offline_label,
            )
        offline_stream = online.PromptStream(
            range(len(ds_rows)) if n_off else [],
            config.seed + 1,
            int(data_state.get("offline_cursor", 0)),
        )
        make_step = functools.partial(
            engine.make_train_step,
            loss_fn,
            tx,
            state_shardings=st_shardings,
            mesh=ctx.mesh,
            schedule=schedule,
        )
        train_step = None
        for step_no in range(start + 1, config.num_train_steps + 1):
            prompts = [p for p in prompts_stream.next(n_on) for _ in range(o.group_size)]
            r = run.rollout(step_no, prompts, state.params)
            if o.label == "reward":
                scores = r.train_reward
            else:  # the same forward as the reference, so pi == ref gives exact ties, not float noise
                pol = np.asarray(
                    run.forward(
                        state.params,
                        r.dev["input_ids"],
                        r.dev["attention_mask"],
                        r.dev["loss_mask"],
                    )
                )
                scores = o.implicit_beta * (rollout.sequence_sums(pol, r.mask) - r.seq_ref)
            chosen, rejected, weight, stats = pair_slots(
                scores,
                o.group_size,
                strategy=o.pairing,
                pairs_per_group=o.pairs_per_group,
                seed=[config.seed, step_no],
                margin=o.pair_margin,
            )
            label_rng = np.random.default_rng([config.seed, step_no, 0x4C41424C])  # "LABL"
            if o.label == "implicit":  # SAIL-PP: the pair's label is drawn from the implicit reward
                h = scores[chosen] - scores[rejected]
                swap = implicit_swaps(h, labels=o.implicit_labels, rng=label_rng) & (weight > 0)
                chosen, rejected = (
                    np.where(swap, rejected, chosen),
                    np.where(swap, chosen, rejected),
                )
            train_np = preference_batch(r.batch, r.seq_ref, chosen, rejected, weight)
            m = dict(
                pairs_per_step=stats["pairs"],
                pair_ties=stats["pair_ties"],
                groups_without_pair=stats["groups_without_pair"],
                pair_margin=stats["pair_margin_mean"],
            )
            if n_off:
                off = dataset_step(
                    ds,
                    offline_stream.next(n_off),
                    o,
                    forward=run.forward,
                    params=state.params,
                    ref_params=run.ref_params,
                    mesh=ctx.mesh,
                    rng=label_rng,
                )
                m.update(off.pop("metrics"))
                train_np = {k: np.concatenate([train_np[k], off[k]]) for k in train_np}
            # no per-token entropy in a preference step: the sample estimate -E[log pi(y_t)]
            m["entropy"] = float(-r.batch["old_logps"].sum() / max(r.mask.sum(), 1))
            state, train_step, step_ms, train_tokens, train_time = online.update(
                run, state, train_np, step_no=step_no, train_step=train_step, make_step=make_step
            )
            m.update(online.mean_metrics(step_ms))
            m.update(
                online.rollout_metrics(r, r.train_reward),
                train_tokens_per_s=train_tokens / max(train_time, 1e-9),
                train_time_s=train_time,
            )
            metrics.push(step_no, host=m)
            if ctx.should_save(step_no):
                ctx.save(
                    step_no,
                    state,
                    {
                        "prompt_cursor": prompts_stream.cursor,
                        "offline_cursor": offline_stream.cursor,
                    },
                )
        ctx.finish(state.params)
        return state
