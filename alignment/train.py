"""The training engine: sharded state creation, one jitted pure step, and the host loop.

    state = create_train_state(...)            # params born sharded (eval_shape + jitted init)
    step = make_train_step(...)                # jax.jit(step, in/out shardings, donate state)
    train(config, workdir)                     # data -> step -> metrics one step late -> checkpoint

NNX appears here and in `alignment/models/` only: the model is split once into a graphdef and a
pure dict of parameters; the step merges them back inside the jitted function.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from alignment import checkpoint as ckpt_lib
from alignment import metrics as metrics_lib
from alignment import optim, sharding
from alignment.learners import offline
from alignment.learners.validation import KINDS, check_mesh_batch, validate_config  # noqa: F401 (re-exported)
from alignment.types import TrainState

log = logging.getLogger(__name__)
# config.kind -> "module:function(config, workdir)" for kinds that run their own host loop; the
# offline kinds (KINDS) run the loop below
PIPELINES = {
    "online": "alignment.learners.online:train_online",
}
LossFn = Callable[[Any, Any, Mapping[str, jax.Array]], tuple[jax.Array, jax.Array, dict]]


# ----------------------------------------------------------------------------- model & state

def model_config(config, vocab_size: int):
    """The `ModelConfig` of `config.model` (a preset plus the engine's dtype/layout switches)."""
    from alignment import models
    m = config.model
    # a reward model is a sequence classifier: one-label score head, no LM head
    head = dict(num_labels=1, has_lm_head=False) if config.kind == "reward_model" else {}
    return models.get_preset(m.preset, vocab_size=vocab_size, dtype=m.dtype, param_dtype=m.param_dtype,
                             scan_layers=m.scan_layers, remat_policy=m.remat_policy, **head)


def make_logprob_fn(graphdef, chunk_size: int, remat: bool = True) -> Callable:
    """`logprob_fn(params, input_ids, attention_mask, loss_mask, *, segment_ids, positions)`:
    per-token float32 log-probs `[B, T]` of the model `graphdef` under the pure dict `params`,
    computed `chunk_size` positions at a time (`remat`: recompute each chunk's logits in the
    backward pass rather than keep them; see `models.logprobs.token_logprobs`)."""
    from alignment.models.logprobs import model_logprobs

    def logprob_fn(params, input_ids, attention_mask, loss_mask, *, segment_ids=None, positions=None):
        model = nnx.merge(graphdef, params)
        return model_logprobs(model, input_ids, attention_mask, loss_mask, segment_ids=segment_ids,
                              positions=positions, chunk_size=chunk_size, remat=remat)
    return logprob_fn


def abstract_model(model_cfg, seed: int = 0):
    """(graphdef, abstract pure-dict params, their shardings per mesh via `param_shardings`)."""
    from alignment import models
    abs_model = nnx.eval_shape(lambda: models.Transformer(model_cfg, rngs=nnx.Rngs(seed)))
    graphdef, abs_state, rest = nnx.split(abs_model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError("the engine expects a model whose state is all nnx.Param; found other "
                         f"variables: {jax.tree.structure(rest)}")
    return graphdef, abs_state


def param_shardings(abs_state, mesh) -> Any:
    """Pure dict of `NamedSharding`s from each parameter's logical axes and the rule table."""
    return nnx.to_pure_dict(sharding.state_shardings(abs_state, mesh))


def init_params(model_cfg, mesh, seed: int):
    """Random parameters created already sharded (no full copy on one device first)."""
    from alignment import models
    graphdef, abs_state = abstract_model(model_cfg, seed)
    shardings = param_shardings(abs_state, mesh)

    @functools.partial(jax.jit, out_shardings=shardings)
    def init():
        model = models.Transformer(model_cfg, rngs=nnx.Rngs(seed))
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return graphdef, init(), shardings


def load_params(path: str, model_cfg_dict, mesh, *, num_labels: int | None = None):
    """Parameters of a Hugging Face folder, placed with the rule-table shardings.

    `model_cfg_dict` is `config.model`: the folder fixes the architecture; the config still sets
    the parameter dtype (master weights), the compute dtype and the layout switches. `num_labels`
    loads it as a sequence classifier (see `models.from_pretrained`). Returns
    `(graphdef, params, shardings, model_config)`."""
    from alignment import models
    m = model_cfg_dict
    model = models.from_pretrained(path, dtype=m.param_dtype, mesh=mesh, scan_layers=m.scan_layers,
                                   remat_policy=m.remat_policy, num_labels=num_labels)
    # from_pretrained sets one dtype for both; the compute dtype only lives in the graph
    model_cfg = model.config.replace(dtype=m.dtype)
    _, state, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(f"{path}: the engine expects a model whose state is all nnx.Param")
    graphdef, _ = abstract_model(model_cfg)
    shardings = param_shardings(state, mesh)
    params = jax.tree.map(lambda x, s: jax.device_put(x, s), nnx.to_pure_dict(state), shardings)
    return graphdef, params, shardings, model_cfg


def opt_state_shardings(tx, abs_params, shardings, mesh):
    """Optimizer-state leaves shaped like a parameter take its sharding; the rest replicate."""
    abs_opt = jax.eval_shape(tx.init, abs_params)
    rep = sharding.replicated(mesh)
    return optax.tree_map_params(tx, lambda _, s: s, abs_opt, shardings,
                                 transform_non_params=lambda _: rep,
                                 is_leaf=lambda x: isinstance(x, NamedSharding))


def create_train_state(params, shardings, tx, mesh, *, seed: int, with_reference: bool):
    """`(state, state_shardings)`; the optimizer state is initialised sharded like `params`."""
    abs_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    rep = sharding.replicated(mesh)
    st_shardings = TrainState(step=rep, params=shardings,
                              opt_state=opt_state_shardings(tx, abs_params, shardings, mesh), rng=rep,
                              ref_params=shardings if with_reference else None)

    @functools.partial(jax.jit, out_shardings=st_shardings)
    def init(p):
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),
                          rng=jax.random.PRNGKey(seed),
                          # a copy: the step donates the state, and one buffer cannot be donated twice
                          ref_params=jax.tree.map(jnp.copy, p) if with_reference else None)
    return init(params), st_shardings


# ----------------------------------------------------------------------------- the step

def _split_micro(x, num_micro: int):
    """[B, ...] -> [A, B/A, ...] taking every A-th row, so each micro-batch keeps the batch's
    device layout (row r lives where it lived in the big batch)."""
    b = x.shape[0]
    if b % num_micro:
        raise ValueError(f"batch size {b} is not divisible by grad_accum_steps={num_micro}")
    y = x.reshape(b // num_micro, num_micro, *x.shape[1:])
    return jnp.swapaxes(y, 0, 1)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *, state_shardings,
                    batch_shardings, mesh, grad_accum_steps: int = 1,
                    schedule: Callable | None = None, donate: bool = True):
    """One jitted pure `train_step(state, batch) -> (state, metrics)`.

    `loss_fn(params, ref_params, batch) -> (loss, weight, metrics)` with `loss` a mean over
    `weight` items. With `grad_accum_steps = A > 1` the batch is cut into A micro-batches
    (a `lax.scan`), gradients summed as `sum_i w_i * grad(loss_i)` and divided by `sum_i w_i`:
    exactly the gradient of the big batch's mean. Metrics are weighted the same way.
    """
    rep = sharding.replicated(mesh)

    def micro(params, ref_params, mb):
        def f(p):
            loss, w, m = loss_fn(p, ref_params, mb)
            return loss * w, (w, m)
        (lw, (w, m)), g = jax.value_and_grad(f, has_aux=True)(params)
        return g, lw, w, jax.tree.map(lambda v: v * w, m)

    def train_step(state: TrainState, batch):
        if grad_accum_steps == 1:
            g, lw, w, mw = micro(state.params, state.ref_params, batch)
        else:
            mbs = jax.tree.map(functools.partial(_split_micro, num_micro=grad_accum_steps), batch)
            mbs = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
                x, NamedSharding(mesh, P(None, *sharding.batch_spec(x.ndim - 1)))), mbs)
            first = jax.tree.map(lambda x: x[0], mbs)
            shapes = jax.eval_shape(micro, state.params, state.ref_params, first)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)

            def body(acc, mb):
                out = micro(state.params, state.ref_params, mb)
                return jax.tree.map(lambda a, o: a + o.astype(jnp.float32), acc, out), None
            (g, lw, w, mw), _ = jax.lax.scan(body, zeros, mbs)
        grads = jax.tree.map(lambda x, p: (x / w).astype(p.dtype), g, state.params)
        metrics = {k: v / w for k, v in mw.items()}
        metrics["loss"] = lw / w
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["param_norm"] = optax.global_norm(params)
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)

    return jax.jit(train_step, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, rep), donate_argnums=(0,) if donate else ())


def make_eval_step(loss_fn: LossFn, *, state_shardings, batch_shardings, mesh):
    """Jitted `eval_step(state, batch) -> (loss * w, w, {k: metric * w})` at `state.params`: the
    train step's loss and metrics with no gradient and no update (the state is not donated).
    Summing the outputs over batches and dividing by the summed `w` averages held-out batches
    the way the train step averages micro-batches (token-weighted for token-mean SFT)."""
    rep = sharding.replicated(mesh)

    def eval_step(state: TrainState, batch):
        loss, w, m = loss_fn(state.params, state.ref_params, batch)
        f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
        return f32(loss * w), f32(w), {k: f32(v * w) for k, v in m.items()}

    return jax.jit(eval_step, in_shardings=(state_shardings, batch_shardings), out_shardings=rep)


def evaluate(eval_step, state, batches) -> dict[str, float]:
    """`{"eval_loss": ..., "eval_<metric>": ...}`: weighted means of `eval_step` over `batches`
    (all dispatched before one fetch; sums in float64 on the host)."""
    outs = jax.device_get([eval_step(state, b) for b in batches])
    w = sum(float(o[1]) for o in outs)
    if not w > 0:
        raise ValueError(f"the {len(batches)} eval batch(es) carry no weight (no response tokens or pairs "
                         "to average over); check data.splits['eval'] or raise eval_batches")
    result = {"eval_loss": sum(float(o[0]) for o in outs) / w}
    for k in outs[0][2]:
        result[f"eval_{k}"] = sum(float(o[2][k]) for o in outs) / w
    return result


def make_loss_fn(config, logprob_fn, *, score_fn=None) -> LossFn:
    """The learner for `config.kind` bound to `config.loss` / `config.loss_kwargs`
    (`score_fn`, from `models.make_score_fn`, for kind reward_model)."""
    from alignment import losses
    loss = losses.get(config.loss)
    kwargs = config.loss_kwargs.to_dict()
    if config.kind == "reward_model":
        from alignment.learners import reward_model
        if score_fn is None:
            raise ValueError("kind='reward_model' needs score_fn (alignment.models.make_score_fn(graphdef))")
        return lambda p, ref, b: reward_model.reward_model_loss(score_fn, p, b, loss_fn=loss, loss_kwargs=kwargs)
    if config.kind == "sft":
        return lambda p, ref, b: offline.sft_loss(logprob_fn, p, b, loss_fn=loss, loss_kwargs=kwargs,
                                                  ref_params=ref)
    token_level = losses.available()[config.loss] == "token_preference"
    return lambda p, ref, b: offline.preference_loss(
        logprob_fn, p, b, loss_fn=loss, loss_kwargs=kwargs, reference_mode=config.reference.mode,
        ref_params=ref, token_level=token_level)


def batch_shardings_for(batch: Mapping[str, Any], mesh):
    return {k: sharding.batch_sharding(mesh, np.ndim(v)) for k, v in batch.items()}


def to_global(batch: Mapping[str, np.ndarray], shardings) -> dict[str, jax.Array]:
    """This host's rows -> global arrays sharded over (data, fsdp)."""
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v)) for k, v in batch.items()}


# ----------------------------------------------------------------------------- host loop

def init_distributed(config) -> None:
    d = config.distributed
    if d.num_processes <= 1:
        return
    if d.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", d.cpu_collectives)
    jax.distributed.initialize(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                               process_id=d.process_id)


def make_tokenizer(name: str):
    from alignment import tokenizer as tok_lib
    return tok_lib.tiny_tokenizer() if name == "tiny" else tok_lib.Tokenizer.from_pretrained(name)


class _ReferenceCache:
    """Precomputed reference log-probs, computed off the train step and cached per example
    (keyed by the example's token bytes) so later epochs reuse them. Only a single process
    caches: with several, hosts could disagree on a hit and deadlock the collective forward."""

    def __init__(self, ref_fn, ref_params, enabled: bool):
        self.ref_fn, self.ref_params, self.enabled = ref_fn, ref_params, enabled
        self.table: dict[bytes, tuple[float, float]] = {}

    @staticmethod
    def _keys(batch_np):
        fields = offline.PREF_FIELDS
        return [b"".join(np.ascontiguousarray(batch_np[f][i]).tobytes() for f in fields)
                for i in range(len(batch_np[fields[0]]))]

    def __call__(self, batch_np, batch, shardings):
        if all(f in batch_np for f in offline.REFERENCE_FIELDS):
            return batch
        keys = self._keys(batch_np) if self.enabled else None
        if keys is not None and all(k in self.table for k in keys):
            rc = np.asarray([self.table[k][0] for k in keys], np.float32)
            rr = np.asarray([self.table[k][1] for k in keys], np.float32)
            extra = {"reference_chosen_logps": rc, "reference_rejected_logps": rr}
            mesh = next(iter(shardings.values())).mesh  # `shardings` has no entry for the new fields
            extra = to_global(extra, batch_shardings_for(extra, mesh))
        else:
            rc, rr = self.ref_fn(self.ref_params, {k: batch[k] for k in offline.PREF_FIELDS})
            extra = {"reference_chosen_logps": rc, "reference_rejected_logps": rr}
            if keys is not None:
                for k, c, r in zip(keys, np.asarray(rc), np.asarray(rr)):
                    self.table[k] = (float(c), float(r))
        return {**batch, **extra}


def load_eval_batches(config, tokenizer, mesh, process_index: int, process_count: int, prepare):
    """The first `config.eval_batches` batches of `split="eval"` (the data module maps it to
    `data.splits["eval"]`), each of the micro-batch size `global_batch_size / grad_accum_steps`
    (a size the step is known to fit), fixed for the whole run so evaluations are comparable.
    `prepare(batch_np) -> (global batch, shardings)` places them like train batches."""
    from alignment import data as data_lib
    size = config.global_batch_size // config.grad_accum_steps
    iterator = data_lib.make_iterator(config.data, tokenizer, kind=config.data.kind, split="eval",
                                      global_batch_size=size, seed=config.data.seed,
                                      process_index=process_index, process_count=process_count)
    if config.eval_batches * size > iterator.num_examples:
        log.warning("eval: %d batches of %d rows exceed the %d held-out examples; some are counted twice",
                    config.eval_batches, size, iterator.num_examples)
    return [prepare(next(iterator)) for _ in range(config.eval_batches)]


def run_record(config, workdir: str, reference: str) -> dict[str, Any]:
    """What `experiments.evaluate` reads from `WORKDIR/run.json`, plus the resolved config."""
    tokenizer = config.tokenizer if config.tokenizer == "tiny" else os.path.abspath(config.tokenizer)
    return {"kind": config.kind, "loss": config.loss, "reference": reference, "task": config.task,
            "tokenizer": tokenizer, "chat_template": bool(config.data.chat_template),
            "policy": os.path.join(workdir, "hf") if config.export_hf else "", "config": config.to_dict()}


def train(config, workdir: str, *, extra_metrics: Mapping[str, float] | None = None) -> TrainState:
    """Runs (or resumes) `config` in `workdir`; returns the final state. See module docstring.

    Writes `WORKDIR/run.json` up front; with `export_hf`, the final policy goes to `WORKDIR/hf`
    and, for a random init, the initial weights (the reference) to `WORKDIR/reference_hf`, both
    with the tokenizer's files. Every `eval_every_steps` steps (and at the last step) the loss
    on fixed held-out batches is logged as `eval_loss` / `eval_<metric>` on that step's line.
    `extra_metrics` (host floats) are added to every logged line: constants of the run that a
    pipeline computed before training, e.g. the reward of the pairs RSO generated.
    """
    from alignment.learners import registry  # scaffold: the registry takes over dispatch
    if config.kind in registry.kinds():
        return registry.run(config, workdir)
    if config.kind in PIPELINES:  # a kind with its own host loop (online RL, generate-then-train)
        module, fn = PIPELINES[config.kind].split(":")
        return getattr(importlib.import_module(module), fn)(config, workdir)
    validate_config(config)
    init_distributed(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    mesh = sharding.make_mesh(config.mesh.to_dict())
    check_mesh_batch(config, mesh)
    tokenizer = make_tokenizer(config.tokenizer)
    pi, pc = jax.process_index(), jax.process_count()

    # --- model, optimizer, state (fresh or restored)
    if config.model.init_from:
        graphdef, params, shardings, model_cfg = load_params(
            config.model.init_from, config.model, mesh, num_labels=1 if config.kind == "reward_model" else None)
        reference = os.path.abspath(config.model.init_from)
    else:
        model_cfg = model_config(config, tokenizer.vocab_size)
        graphdef, params, shardings = init_params(model_cfg, mesh, config.seed)
        reference = os.path.join(workdir, "reference_hf") if config.export_hf else ""
        # the initial weights are a pure function of the seed: a resumed run finds them written
        if config.export_hf and not os.path.isfile(os.path.join(reference, "config.json")):
            ckpt_lib.export_hf(graphdef, params, reference, tokenizer=tokenizer)
    if config.data.max_len > model_cfg.max_seq_len:
        raise ValueError(f"data.max_len={config.data.max_len} exceeds the model's max_seq_len={model_cfg.max_seq_len}")
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise ValueError(f"tokenizer {config.tokenizer!r} has {tokenizer.vocab_size} ids but the model's "
                         f"vocab_size is {model_cfg.vocab_size}")
    if pi == 0:
        ckpt_lib.write_run_record(workdir, run_record(config, workdir, reference))
    schedule = optim.make_schedule(config.optim, config.num_train_steps)
    tx = optim.make_optimizer(config.optim, params, config.num_train_steps)
    from alignment import losses
    uses_ref = offline.needs_reference(losses.get(config.loss))
    in_step_ref = uses_ref and config.reference.mode == "in_step"
    state, st_shardings = create_train_state(params, shardings, tx, mesh, seed=config.seed,
                                             with_reference=in_step_ref)
    logprob_fn = make_logprob_fn(graphdef, config.model.logprob_chunk_size, config.model.logprob_remat)
    ref_cache = None
    if config.kind == "preference" and config.reference.mode == "precomputed" and uses_ref:
        ref_params = jax.tree.map(jnp.copy, params)
        ref_fn = jax.jit(functools.partial(offline.reference_logps, logprob_fn))
        ref_cache = _ReferenceCache(ref_fn, ref_params, enabled=pc == 1)
    del params

    def prepare(batch_np):
        """Host rows -> (global batch, its shardings), with cached reference log-probs."""
        b_shardings = batch_shardings_for(batch_np, mesh)
        batch = to_global(batch_np, b_shardings)
        if ref_cache is not None:
            batch = ref_cache(batch_np, batch, b_shardings)
            b_shardings = batch_shardings_for(batch, mesh)
        return batch, b_shardings

    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                         every_steps=config.checkpoint_every_steps,
                                         keep=config.keep_checkpoints, async_save=config.checkpoint_async)
    from alignment import data as data_lib
    iterator = data_lib.make_iterator(config.data, tokenizer, kind=config.data.kind, split="train",
                                      global_batch_size=config.global_batch_size, seed=config.data.seed,
                                      process_index=pi, process_count=pc)
    latest = checkpointer.latest_step()
    if latest is not None:
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                state, st_shardings)
        ref_params = state.ref_params  # not checkpointed: the initial weights, re-created above
        state, data_states = checkpointer.restore(latest, abstract)
        state = state.replace(ref_params=ref_params)
        iterator.set_state(ckpt_lib.local_data_state(data_states))
        log.info("resumed from step %d in %s", latest, workdir)
    start = int(state.step)

    writer = metrics_lib.MetricsWriter(workdir, total_steps=config.num_train_steps, start_step=start,
                                       enabled=pi == 0, tensorboard=config.tensorboard,
                                       progress=None if config.progress_bar else False)
    from alignment import models
    score_fn = models.make_score_fn(graphdef) if config.kind == "reward_model" else None
    loss_fn = make_loss_fn(config, logprob_fn, score_fn=score_fn)
    train_step = eval_step = None
    eval_batches = None
    pending = None  # (step, device metrics, host tokens, host eval metrics) of the step launched last

    def eval_due(step_no: int) -> bool:
        every = config.eval_every_steps
        return every > 0 and (step_no % every == 0 or step_no == config.num_train_steps)

    def flush(now: float, last: list):
        nonlocal pending
        if pending is None:
            return
        step_no, m_dev, tokens, m_eval = pending
        pending = None
        m = metrics_lib.to_host(m_dev)
        m.update(m_eval)
        m.update(extra_metrics or {})
        metrics_lib.check_finite(m, step_no)
        dt = now - last[0]
        last[0] = now
        m["tokens_per_s"] = tokens / dt if dt > 0 else 0.0
        m["step_time_s"] = dt
        if step_no % config.log_every_steps == 0 or step_no == config.num_train_steps or m_eval:
            writer.write(step_no, m)

    clock = [time.perf_counter()]
    try:
        for step_no in range(start + 1, config.num_train_steps + 1):
            batch_np = next(iterator)
            data_state = iterator.get_state()
            batch, b_shardings = prepare(batch_np)
            if train_step is None:
                train_step = make_train_step(loss_fn, tx, state_shardings=st_shardings,
                                             batch_shardings=b_shardings, mesh=mesh,
                                             grad_accum_steps=config.grad_accum_steps, schedule=schedule)
            tokens = float(sum(np.sum(batch_np[k]) for k in batch_np if k.endswith("attention_mask"))) * pc
            state, m_dev = train_step(state, batch)
            flush(time.perf_counter(), clock)  # the previous step's metrics: one step late
            m_eval = {}
            if eval_due(step_no):
                jax.block_until_ready(m_dev)
                t0 = time.perf_counter()
                if eval_step is None:
                    eval_batches = load_eval_batches(config, tokenizer, mesh, pi, pc, prepare)
                    eval_step = make_eval_step(loss_fn, state_shardings=st_shardings,
                                               batch_shardings=eval_batches[0][1], mesh=mesh)
                m_eval = evaluate(eval_step, state, [b for b, _ in eval_batches])
                m_eval["eval_time_s"] = time.perf_counter() - t0
                clock[0] += m_eval["eval_time_s"]  # evaluation is not step time
            pending = (step_no, m_dev, tokens, m_eval)
            if checkpointer.should_save(step_no) or step_no == config.num_train_steps:
                jax.block_until_ready(m_dev)
                flush(time.perf_counter(), clock)  # never checkpoint a state whose metrics are non-finite
                checkpointer.save(step_no, state, ckpt_lib.gather_data_states(data_state))
        flush(time.perf_counter(), clock)
    finally:
        checkpointer.close()
        writer.close()
    if config.export_hf:
        ckpt_lib.export_hf(graphdef, state.params, os.path.join(workdir, "hf"), tokenizer=tokenizer)
    return state
