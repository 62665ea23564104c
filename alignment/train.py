"""The training engine: sharded state creation, one jitted pure step, and the host loop.

    state = create_train_state(...)            # params born sharded (eval_shape + jitted init)
    step = make_train_step(...)                # jax.jit(step, in/out shardings, donate state)
    train(config, workdir)                     # data -> step -> metrics one step late -> checkpoint

NNX appears here and in `alignment/models/` only: the model is split once into a graphdef and a
pure dict of parameters; the step merges them back inside the jitted function.
"""

from __future__ import annotations

import functools
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
from alignment.types import TrainState

KINDS = ("sft", "preference")
log = logging.getLogger(__name__)
LossFn = Callable[[Any, Any, Mapping[str, jax.Array]], tuple[jax.Array, jax.Array, dict]]


# ----------------------------------------------------------------------------- model & state

def model_config(config, vocab_size: int):
    """The `ModelConfig` of `config.model` (a preset plus the engine's dtype/layout switches)."""
    from alignment import models
    m = config.model
    return models.get_preset(m.preset, vocab_size=vocab_size, dtype=m.dtype, param_dtype=m.param_dtype,
                             scan_layers=m.scan_layers, remat_policy=m.remat_policy)


def make_logprob_fn(graphdef, chunk_size: int) -> Callable:
    """`logprob_fn(params, input_ids, attention_mask, loss_mask, *, segment_ids, positions)`:
    per-token float32 log-probs `[B, T]` of the model `graphdef` under the pure dict `params`."""
    from alignment.models.logprobs import model_logprobs

    def logprob_fn(params, input_ids, attention_mask, loss_mask, *, segment_ids=None, positions=None):
        model = nnx.merge(graphdef, params)
        return model_logprobs(model, input_ids, attention_mask, loss_mask, segment_ids=segment_ids,
                              positions=positions, chunk_size=chunk_size)
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


def load_params(path: str, dtype: str, mesh):
    """Parameters of a Hugging Face folder, placed with the rule-table shardings."""
    from alignment import models
    model = models.from_pretrained(path, dtype=dtype, mesh=mesh)
    graphdef, state, rest = nnx.split(model, nnx.Param, ...)
    shardings = param_shardings(state, mesh)
    params = jax.tree.map(lambda x, s: jax.device_put(x, s), nnx.to_pure_dict(state), shardings)
    return graphdef, params, shardings


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


def make_loss_fn(config, logprob_fn) -> LossFn:
    """The learner for `config.kind` bound to `config.loss` / `config.loss_kwargs`."""
    from alignment import losses
    loss = losses.get(config.loss)
    kwargs = config.loss_kwargs.to_dict()
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


# ----------------------------------------------------------------------------- validation

def validate_config(config) -> None:
    """Semantic checks that must fail before anything compiles (types and unknown keys are
    already enforced by the locked ConfigDict and the flag parser)."""
    from alignment import losses
    if config.kind not in KINDS:
        raise ValueError(f"config.kind must be one of {KINDS}, got {config.kind!r}")
    for key in ("num_train_steps", "checkpoint_every_steps", "keep_checkpoints", "global_batch_size",
                "grad_accum_steps", "log_every_steps"):
        if int(config[key]) <= 0:
            raise ValueError(f"config.{key} must be positive, got {config[key]}")
    if config.reference.mode not in offline.REFERENCE_MODES:
        raise ValueError(f"config.reference.mode must be one of {offline.REFERENCE_MODES}, "
                         f"got {config.reference.mode!r}")
    family = losses.available().get(config.loss)
    if family is None:
        raise ValueError(f"config.loss={config.loss!r} is not a registered loss; "
                         f"available: {sorted(losses.available())}")
    want = {"sft": ("supervised",), "preference": ("preference", "token_preference")}[config.kind]
    if family not in want:
        raise ValueError(f"config.loss={config.loss!r} is a {family} loss; kind={config.kind!r} needs {want}")
    loss_fn = losses.get(config.loss)
    offline.check_supported(loss_fn, config.kind)
    if offline.needs_reference(loss_fn) and config.reference.mode == "precomputed" and (
            config.kind == "sft" or family == "token_preference"):
        raise ValueError(f"loss {config.loss!r} needs per-token reference log-probs: set reference.mode='in_step'")
    names, _, var_kw = offline.loss_parameters(loss_fn)
    unknown = set(config.loss_kwargs.keys()) - names
    if unknown and not var_kw:
        raise ValueError(f"config.loss_kwargs {sorted(unknown)} are not arguments of loss {config.loss!r}")
    d = config.distributed
    if d.num_processes > 1 and not d.coordinator_address:
        raise ValueError("distributed.num_processes > 1 needs distributed.coordinator_address (host:port)")
    if not 0 <= d.process_id < max(d.num_processes, 1):
        raise ValueError(f"distributed.process_id={d.process_id} outside [0, {d.num_processes})")
    if config.global_batch_size % (max(d.num_processes, 1) * config.grad_accum_steps):
        raise ValueError(f"global_batch_size={config.global_batch_size} must divide evenly over "
                         f"{d.num_processes} process(es) x grad_accum_steps={config.grad_accum_steps}")
    optim.make_schedule(config.optim, config.num_train_steps)  # warmup within the run, known schedule
    if config.data.kind != config.kind:
        raise ValueError(f"config.data.kind={config.data.kind!r} differs from config.kind={config.kind!r}")


def check_mesh_batch(config, mesh) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = config.global_batch_size // config.grad_accum_steps
    if micro % shards:
        raise ValueError(f"micro-batch size {micro} (global_batch_size / grad_accum_steps) is not divisible "
                         f"by mesh data x fsdp = {shards}")


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
            extra = to_global({"reference_chosen_logps": rc, "reference_rejected_logps": rr}, shardings)
        else:
            rc, rr = self.ref_fn(self.ref_params, {k: batch[k] for k in offline.PREF_FIELDS})
            extra = {"reference_chosen_logps": rc, "reference_rejected_logps": rr}
            if keys is not None:
                for k, c, r in zip(keys, np.asarray(rc), np.asarray(rr)):
                    self.table[k] = (float(c), float(r))
        return {**batch, **extra}


def train(config, workdir: str) -> TrainState:
    """Runs (or resumes) `config` in `workdir`; returns the final state. See module docstring."""
    from alignment import data as data_lib
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
        graphdef, params, shardings = load_params(config.model.init_from, config.model.dtype, mesh)
    else:
        model_cfg = model_config(config, tokenizer.vocab_size)
        if config.data.max_len > model_cfg.max_seq_len:
            raise ValueError(f"data.max_len={config.data.max_len} exceeds the model's max_seq_len="
                             f"{model_cfg.max_seq_len}")
        graphdef, params, shardings = init_params(model_cfg, mesh, config.seed)
    schedule = optim.make_schedule(config.optim, config.num_train_steps)
    tx = optim.make_optimizer(config.optim, params, config.num_train_steps)
    from alignment import losses
    uses_ref = offline.needs_reference(losses.get(config.loss))
    in_step_ref = uses_ref and config.reference.mode == "in_step"
    state, st_shardings = create_train_state(params, shardings, tx, mesh, seed=config.seed,
                                             with_reference=in_step_ref)
    logprob_fn = make_logprob_fn(graphdef, config.model.logprob_chunk_size)
    ref_cache = None
    if config.kind == "preference" and config.reference.mode == "precomputed" and uses_ref:
        ref_params = jax.tree.map(jnp.copy, params)
        ref_fn = jax.jit(functools.partial(offline.reference_logps, logprob_fn))
        ref_cache = _ReferenceCache(ref_fn, ref_params, enabled=pc == 1)
    del params

    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                         every_steps=config.checkpoint_every_steps,
                                         keep=config.keep_checkpoints, async_save=config.checkpoint_async)
    iterator = data_lib.make_iterator(config.data, tokenizer, kind=config.kind, split="train",
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
    loss_fn = make_loss_fn(config, logprob_fn)
    train_step = None
    pending = None  # (step, device metrics, host tokens) of the step launched last

    def flush(now: float, last: list):
        nonlocal pending
        if pending is None:
            return
        step_no, m_dev, tokens = pending
        pending = None
        m = metrics_lib.to_host(m_dev)
        metrics_lib.check_finite(m, step_no)
        dt = now - last[0]
        last[0] = now
        m["tokens_per_s"] = tokens / dt if dt > 0 else 0.0
        m["step_time_s"] = dt
        if step_no % config.log_every_steps == 0 or step_no == config.num_train_steps:
            writer.write(step_no, m)

    clock = [time.perf_counter()]
    try:
        for step_no in range(start + 1, config.num_train_steps + 1):
            batch_np = next(iterator)
            data_state = iterator.get_state()
            b_shardings = batch_shardings_for(batch_np, mesh)
            batch = to_global(batch_np, b_shardings)
            if ref_cache is not None:
                batch = ref_cache(batch_np, batch, b_shardings)
                b_shardings = batch_shardings_for(batch, mesh)
            if train_step is None:
                train_step = make_train_step(loss_fn, tx, state_shardings=st_shardings,
                                             batch_shardings=b_shardings, mesh=mesh,
                                             grad_accum_steps=config.grad_accum_steps, schedule=schedule)
            tokens = float(sum(np.sum(batch_np[k]) for k in batch_np if k.endswith("attention_mask"))) * pc
            state, m_dev = train_step(state, batch)
            flush(time.perf_counter(), clock)  # the previous step's metrics: one step late
            pending = (step_no, m_dev, tokens)
            if checkpointer.should_save(step_no) or step_no == config.num_train_steps:
                jax.block_until_ready(m_dev)
                flush(time.perf_counter(), clock)  # never checkpoint a state whose metrics are non-finite
                checkpointer.save(step_no, state, ckpt_lib.gather_data_states(data_state))
        flush(time.perf_counter(), clock)
    finally:
        checkpointer.close()
        writer.close()
    if config.export_hf:
        export_hf(graphdef, state.params, os.path.join(workdir, "hf"))
    return state


def export_hf(graphdef, params, path: str) -> None:
    """Writes the policy as a Hugging Face folder (process 0; gathers shards across hosts)."""
    from alignment import models
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
        models.save_pretrained(nnx.merge(graphdef, jax.device_get(params)), path)
