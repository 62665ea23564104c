"""The offline learners' host loop (kinds `sft`, `preference`, `reward_model`):
data -> one jitted step -> metrics one step late -> checkpoint.

    python -m experiments.train --config configs/dpo.py:tiny --workdir /tmp/dpo

Everything a loop shares with the other learners (mesh, tokenizer, starting weights, run.json,
checkpoints, metrics) comes from the engine's run context; this module adds the batches, the
loss of each kind, the precomputed reference cache and the held-out evaluation.

Writes `WORKDIR/run.json` up front; with `export_hf`, the final policy goes to `WORKDIR/hf` and,
for a random init, the initial weights (the reference) to `WORKDIR/reference_hf`, both with the
tokenizer's files. Every `eval_every_steps` steps (and at the last step) the loss on fixed
held-out batches is logged as `eval_loss` / `eval_<metric>` on that step's line.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, Mapping

import jax
import numpy as np

from alignment import data as data_lib
from alignment import engine, losses, models, optim
from alignment.engine import LossFn
from alignment.learners import offline, reward_model
from alignment.learners.validation import check_mesh_batch

log = logging.getLogger(__name__)


def make_loss_fn(config, logprob_fn, *, score_fn=None) -> LossFn:
    """The loss of `config.kind` bound to `config.loss` / `config.loss_kwargs` (`score_fn`, from
    `models.make_score_fn`, for kind reward_model), as the engine's `loss_fn(params, ref, batch)`."""
    loss = losses.get(config.loss)
    kwargs = config.loss_kwargs.to_dict()
    if config.kind == "reward_model":
        if score_fn is None:
            raise ValueError(
                "kind='reward_model' needs score_fn (alignment.models.make_score_fn(graphdef))"
            )
        return lambda p, ref, b: reward_model.reward_model_loss(
            score_fn, p, b, loss_fn=loss, loss_kwargs=kwargs
        )
    if config.kind == "sft":
        return lambda p, ref, b: offline.sft_loss(
            logprob_fn, p, b, loss_fn=loss, loss_kwargs=kwargs, ref_params=ref
        )
    token_level = losses.available()[config.loss] == "token_preference"
    return lambda p, ref, b: offline.preference_loss(
        logprob_fn,
        p,
        b,
        loss_fn=loss,
        loss_kwargs=kwargs,
        reference_mode=config.reference.mode,
        ref_params=ref,
        token_level=token_level,
    )


class ReferenceCache:
    """Precomputed reference log-probs, computed off the train step and cached per example
    (keyed by the example's token bytes) so later epochs reuse them. Only a single process
    caches: with several, hosts could disagree on a hit and deadlock the collective forward."""

    def __init__(self, ref_fn, ref_params, enabled: bool):
        self.ref_fn, self.ref_params, self.enabled = ref_fn, ref_params, enabled
        self.table: dict[bytes, tuple[float, float]] = {}

    @staticmethod
    def _keys(batch_np):
        fields = offline.PREF_FIELDS
        return [
            b"".join(np.ascontiguousarray(batch_np[f][i]).tobytes() for f in fields)
            for i in range(len(batch_np[fields[0]]))
        ]

    def __call__(self, batch_np, batch, shardings):
        if all(f in batch_np for f in offline.REFERENCE_FIELDS):
            return batch
        keys = self._keys(batch_np) if self.enabled else None
        chosen_field, rejected_field = offline.REFERENCE_FIELDS
        if keys is not None and all(k in self.table for k in keys):
            rc = np.asarray([self.table[k][0] for k in keys], np.float32)
            rr = np.asarray([self.table[k][1] for k in keys], np.float32)
            extra = {chosen_field: rc, rejected_field: rr}
            mesh = next(
                iter(shardings.values())
            ).mesh  # `shardings` has no entry for the new fields
            extra = engine.to_global(extra, engine.batch_shardings_for(extra, mesh))
        else:
            rc, rr = self.ref_fn(self.ref_params, {k: batch[k] for k in offline.PREF_FIELDS})
            extra = {chosen_field: rc, rejected_field: rr}
            if keys is not None:
                for k, c, r in zip(keys, np.asarray(rc), np.asarray(rr)):
                    self.table[k] = (float(c), float(r))
        return {**batch, **extra}


def load_eval_batches(config, tokenizer, mesh, process_index: int, process_count: int, prepare):
    """The first `config.eval_batches` batches of `split="eval"` (the data module maps it to
    `data.splits["eval"]`), each of the micro-batch size `global_batch_size / grad_accum_steps`
    (a size the step is known to fit), fixed for the whole run so evaluations are comparable.
    `prepare(batch_np) -> (global batch, shardings)` places them like train batches."""
    size = config.global_batch_size // config.grad_accum_steps
    iterator = data_lib.make_iterator(
        config.data,
        tokenizer,
        kind=config.data.kind,
        split="eval",
        global_batch_size=size,
        seed=config.data.seed,
        process_index=process_index,
        process_count=process_count,
    )
    if config.eval_batches * size > iterator.num_examples:
        log.warning(
            "eval: %d batches of %d rows exceed the %d held-out examples; some are counted twice",
            config.eval_batches,
            size,
            iterator.num_examples,
        )
    return [prepare(next(iterator)) for _ in range(config.eval_batches)]


def train_offline(config, workdir: str, *, extra_metrics: Mapping[str, float] | None = None):
    """Runs (or resumes) an offline config in `workdir`; returns the final train state.
    `extra_metrics` (host floats) are added to every logged line: constants of the run that a
    pipeline computed before training, e.g. the reward of the pairs RSO generated."""
    num_labels = 1 if config.kind == "reward_model" else None  # a sequence classifier: one score
    with engine.open_run(config, workdir, num_labels=num_labels) as ctx:
        return _loop(ctx, config, extra_metrics)


def _loop(ctx: engine.RunContext, config, extra_metrics) -> Any:
    mesh, tokenizer = ctx.mesh, ctx.tokenizer
    pi, pc = ctx.process_index, ctx.process_count
    check_mesh_batch(config, mesh)
    if config.data.max_len > ctx.model_config.max_seq_len:
        raise ValueError(
            f"data.max_len={config.data.max_len} exceeds the model's "
            f"max_seq_len={ctx.model_config.max_seq_len}"
        )
    ctx.write_record()
    schedule = optim.make_schedule(config.optim, config.num_train_steps)
    tx = optim.make_optimizer(config.optim, ctx.params, config.num_train_steps)
    uses_ref = offline.needs_reference(losses.get(config.loss))
    precomputed = (
        config.kind == "preference" and config.reference.mode == "precomputed" and uses_ref
    )
    ref_params = ctx.reference_params() if precomputed else None
    state, st_shardings = ctx.create_state(
        tx, with_reference=uses_ref and config.reference.mode == "in_step"
    )
    logprob_fn = engine.make_logprob_fn(
        ctx.graphdef, config.model.logprob_chunk_size, config.model.logprob_remat
    )
    ref_cache = None
    if precomputed:
        ref_fn = jax.jit(functools.partial(offline.reference_logps, logprob_fn))
        ref_cache = ReferenceCache(ref_fn, ref_params, enabled=pc == 1)

    def prepare(batch_np):
        """Host rows -> (global batch, its shardings), with cached reference log-probs."""
        b_shardings = engine.batch_shardings_for(batch_np, mesh)
        batch = engine.to_global(batch_np, b_shardings)
        if ref_cache is not None:
            batch = ref_cache(batch_np, batch, b_shardings)
            b_shardings = engine.batch_shardings_for(batch, mesh)
        return batch, b_shardings

    iterator = data_lib.make_iterator(
        config.data,
        tokenizer,
        kind=config.data.kind,
        split="train",
        global_batch_size=config.global_batch_size,
        seed=config.data.seed,
        process_index=pi,
        process_count=pc,
    )
    state, data_state = ctx.restore(state, st_shardings)
    if data_state is not None:
        iterator.set_state(data_state)
    metrics = ctx.start_metrics(int(state.step), extra=extra_metrics)
    score_fn = models.make_score_fn(ctx.graphdef) if config.kind == "reward_model" else None
    loss_fn = make_loss_fn(config, logprob_fn, score_fn=score_fn)
    train_step = eval_step = eval_batches = None

    def eval_due(step_no: int) -> bool:
        every = config.eval_every_steps
        return every > 0 and (step_no % every == 0 or step_no == config.num_train_steps)

    for step_no in range(int(state.step) + 1, config.num_train_steps + 1):
        batch_np = next(iterator)
        data_state = iterator.get_state()
        batch, b_shardings = prepare(batch_np)
        if train_step is None:
            train_step = engine.make_train_step(
                loss_fn,
                tx,
                state_shardings=st_shardings,
                batch_shardings=b_shardings,
                mesh=mesh,
                grad_accum_steps=config.grad_accum_steps,
                schedule=schedule,
            )
        tokens = (
            float(sum(np.sum(batch_np[k]) for k in batch_np if k.endswith("attention_mask"))) * pc
        )
        state, m_dev = train_step(state, batch)
        metrics.flush()  # the previous step's metrics: one step late
        m_eval = {}
        if eval_due(step_no):
            jax.block_until_ready(m_dev)
            t0 = time.perf_counter()
            if eval_step is None:
                eval_batches = load_eval_batches(config, tokenizer, mesh, pi, pc, prepare)
                eval_step = engine.make_eval_step(
                    loss_fn,
                    state_shardings=st_shardings,
                    batch_shardings=eval_batches[0][1],
                    mesh=mesh,
                )
            m_eval = engine.evaluate(eval_step, state, [b for b, _ in eval_batches])
            m_eval["eval_time_s"] = time.perf_counter() - t0
            metrics.pause(m_eval["eval_time_s"])  # evaluation is not step time
        metrics.push(step_no, m_dev, host=m_eval, tokens=tokens, always=bool(m_eval))
        if ctx.should_save(step_no):
            ctx.save(step_no, state, data_state)
    ctx.finish(state.params)
    return state
