"""One run's context, shared by every learner's host loop.

    with engine.open_run(config, workdir) as ctx:      # distributed init, mesh, tokenizer, policy,
        state, st_shardings = ctx.create_state(tx)      # reference, run.json, checkpointer
        state, data_state = ctx.restore(state, st_shardings)   # newest intact checkpoint, if any
        ctx.start_metrics(start_step)                   # metrics.jsonl (+ TensorBoard, progress)
        for step_no in ...:
            state, m = train_step(state, batch)
            ctx.metrics.push(step_no, m)                # logged one step late: no host sync here
            if ctx.should_save(step_no):
                ctx.save(step_no, state, data_state)    # flushes (and checks) metrics first
        ctx.finish(state.params)                        # last metrics, saves committed, WORKDIR/hf

A learner owns its loop and its batches; the context owns what every loop needs the same way:
where the run lives, what it starts from, how it is checkpointed, restored and logged.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from alignment import checkpoint as ckpt_lib
from alignment import metrics as metrics_lib
from alignment import sharding
from alignment import tokenizer as tok_lib
from alignment.engine.state import create_train_state, init_params, load_params, model_config

log = logging.getLogger(__name__)


def init_distributed(config) -> None:
    """`jax.distributed.initialize` from `config.distributed` when it names several processes."""
    d = config.distributed
    if d.num_processes <= 1:
        return
    if d.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", d.cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=d.coordinator_address,
        num_processes=d.num_processes,
        process_id=d.process_id,
    )


def make_tokenizer(name: str):
    """`"tiny"` (the deterministic test tokenizer) or a folder with the tokenizer's files."""
    return tok_lib.tiny_tokenizer() if name == "tiny" else tok_lib.Tokenizer.from_pretrained(name)


def run_record(config, workdir: str, reference: str) -> dict[str, Any]:
    """What `experiments.evaluate` reads from `WORKDIR/run.json`, plus the resolved config."""
    tokenizer = (
        config.tokenizer if config.tokenizer == "tiny" else os.path.abspath(config.tokenizer)
    )
    return {
        "kind": config.kind,
        "loss": config.loss,
        "reference": reference,
        "task": config.task,
        "tokenizer": tokenizer,
        "chat_template": bool(config.data.chat_template),
        "policy": os.path.join(workdir, "hf") if config.export_hf else "",
        "config": config.to_dict(),
    }


def load_policy(config, tokenizer, mesh, workdir: str, *, num_labels: int | None = None):
    """The starting weights: `config.model.init_from` (a Hugging Face folder) or a random init
    of `config.model.preset` with `config.seed`. Returns `(graphdef, params, shardings,
    model_config, reference)`, `reference` being the folder of the initial weights recorded in
    run.json (for a random init with `export_hf`, `WORKDIR/reference_hf`, written here once:
    the initial weights are a pure function of the seed, so a resumed run finds them)."""
    if config.model.init_from:
        graphdef, params, shardings, model_cfg = load_params(
            config.model.init_from, config.model, mesh, num_labels=num_labels
        )
        return graphdef, params, shardings, model_cfg, os.path.abspath(config.model.init_from)
    model_cfg = model_config(config, tokenizer.vocab_size, num_labels=num_labels)
    graphdef, params, shardings = init_params(model_cfg, mesh, config.seed)
    reference = os.path.join(workdir, "reference_hf") if config.export_hf else ""
    if config.export_hf and not os.path.isfile(os.path.join(reference, "config.json")):
        ckpt_lib.export_hf(graphdef, params, reference, tokenizer=tokenizer)
    return graphdef, params, shardings, model_cfg, reference


class MetricsLog:
    """Metrics written one step late: `push(step, device_metrics)` keeps this step's metrics on
    device and writes the previous step's, so the host never waits on the step it just launched.

    On flush the device metrics (a dict of scalars, or None) go to the host,
    `host` metrics are added (they win on a shared key), the line is checked for NaN/Inf
    (`metrics.NonFiniteError` names the step and key) and written when due: every
    `log_every_steps`, at the last step, or when pushed with `always=True`. With `tokens`, the
    line gets `tokens_per_s` and `step_time_s` measured between flushes (`pause` removes time
    spent outside steps, such as evaluation)."""

    def __init__(
        self,
        writer: metrics_lib.MetricsWriter,
        *,
        total_steps: int,
        log_every_steps: int,
        extra: Mapping[str, float] | None = None,
    ):
        self.writer, self.total_steps, self.log_every_steps = writer, total_steps, log_every_steps
        self.extra = dict(extra or {})
        self._pending = None
        self._clock = time.perf_counter()

    def push(
        self,
        step_no: int,
        device: Any = None,
        *,
        host: Mapping[str, float] | None = None,
        tokens: float | None = None,
        always: bool = False,
    ) -> None:
        self.flush()
        self._pending = (step_no, device, dict(host or {}), tokens, always)

    def pause(self, seconds: float) -> None:
        self._clock += seconds

    def wait(self) -> None:
        """Blocks until the pending step's device metrics are computed."""
        if self._pending is not None:
            jax.block_until_ready(self._pending[1])

    def flush(self) -> None:
        if self._pending is None:
            return
        step_no, device, host, tokens, always = self._pending
        self._pending = None
        m = metrics_lib.to_host(device) if device is not None else {}
        m.update(host)
        m.update(self.extra)
        metrics_lib.check_finite(m, step_no)
        if tokens is not None:
            now = time.perf_counter()
            dt, self._clock = now - self._clock, now
            m["tokens_per_s"] = tokens / dt if dt > 0 else 0.0
            m["step_time_s"] = dt
        if always or step_no % self.log_every_steps == 0 or step_no == self.total_steps:
            self.writer.write(step_no, m)

    def close(self) -> None:
        self.writer.close()


@dataclasses.dataclass
class RunContext:
    """What a learner's loop needs from the engine; built by `open_run`. `params` and
    `shardings` are the starting weights (the reference, for learners that keep one)."""

    config: Any
    workdir: str
    mesh: jax.sharding.Mesh
    tokenizer: Any
    graphdef: Any
    params: Any
    shardings: Any
    model_config: Any
    reference: str
    checkpointer: ckpt_lib.Checkpointer
    process_index: int
    process_count: int
    total_steps: int
    metrics: MetricsLog | None = None

    def write_record(self, **extra: Any) -> None:
        """`WORKDIR/run.json` (process 0): `run_record` plus learner fields such as `task_kwargs`."""
        if self.process_index == 0:
            ckpt_lib.write_run_record(
                self.workdir, {**run_record(self.config, self.workdir, self.reference), **extra}
            )

    def reference_params(self):
        """A copy of the starting weights, kept frozen (the step donates the live parameters, and
        one buffer cannot be donated twice). Take it before `create_state`."""
        if self.params is None:
            raise ValueError(
                "RunContext.reference_params: the starting weights moved into the train state "
                "(create_state); take the reference copy before creating the state"
            )
        return jax.tree.map(jnp.copy, self.params)

    def create_state(self, tx, *, params=None, shardings=None, with_reference: bool = False):
        """`(state, state_shardings)` for optimizer `tx` over `params` (default: the starting
        weights), the optimizer state sharded like them. The context then lets go of the starting
        weights (`params` becomes None), so a run holds no extra copy of the model beyond the
        state and the references it asked for."""
        params = self.params if params is None else params
        shardings = self.shardings if shardings is None else shardings
        out = create_train_state(
            params, shardings, tx, self.mesh, seed=self.config.seed, with_reference=with_reference
        )
        self.params = None
        return out

    def restore(self, state, state_shardings) -> tuple[Any, dict[str, Any] | None]:
        """`(state, this process's data state)` from the newest intact checkpoint, or
        `(state, None)` for a fresh run. The frozen reference is not checkpointed: `state`'s is kept."""
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_shardings
        )
        restored = self.checkpointer.restore_latest(abstract)
        if restored is None:
            return state, None
        step, new_state, data_states = restored
        log.info("resumed from step %d in %s", step, self.workdir)
        return new_state.replace(ref_params=state.ref_params), ckpt_lib.local_data_state(
            data_states
        )

    def start_metrics(
        self, start_step: int, *, extra: Mapping[str, float] | None = None
    ) -> MetricsLog:
        """The run's metrics log, continuing at `start_step` (0 for a fresh run)."""
        c = self.config
        writer = metrics_lib.MetricsWriter(
            self.workdir,
            total_steps=self.total_steps,
            start_step=start_step,
            enabled=self.process_index == 0,
            tensorboard=c.tensorboard,
            progress=None if c.progress_bar else False,
        )
        self.metrics = MetricsLog(
            writer, total_steps=self.total_steps, log_every_steps=c.log_every_steps, extra=extra
        )
        return self.metrics

    def should_save(self, step_no: int) -> bool:
        return self.checkpointer.should_save(step_no) or step_no == self.total_steps

    def save(self, step_no: int, state, data_state: Mapping[str, Any]) -> None:
        """Checkpoints `state` and this process's `data_state` after writing the pending metrics,
        so a state whose metrics are not finite never becomes a checkpoint."""
        if self.metrics is not None:
            self.metrics.wait()
            self.metrics.flush()
        self.checkpointer.save(step_no, state, ckpt_lib.gather_data_states(dict(data_state)))

    def finish(self, params) -> None:
        """The end of a loop: the last metrics written, pending checkpoint saves committed, and
        `params` (the policy) exported to `WORKDIR/hf` when `config.export_hf`."""
        if self.metrics is not None:
            self.metrics.flush()
        self.checkpointer.wait()
        self.export(params)

    def export(self, params) -> None:
        """`WORKDIR/hf` (weights + tokenizer files) when `config.export_hf`."""
        if self.config.export_hf:
            ckpt_lib.export_hf(
                self.graphdef, params, os.path.join(self.workdir, "hf"), tokenizer=self.tokenizer
            )

    def close(self) -> None:
        try:
            if self.metrics is not None:
                self.metrics.close()
        finally:
            self.checkpointer.close()

    def __enter__(self) -> "RunContext":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_run(
    config, workdir: str, *, total_steps: int | None = None, num_labels: int | None = None
) -> RunContext:
    """Sets a run up in `workdir`: distributed init, mesh from `config.mesh`, tokenizer, starting
    weights (`load_policy`), checkpointer. `total_steps` (default `config.num_train_steps`) is
    the number of logged steps; `num_labels` loads the policy as a sequence classifier."""
    init_distributed(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    mesh = sharding.make_mesh(config.mesh.to_dict())
    tokenizer = make_tokenizer(config.tokenizer)
    graphdef, params, shardings, model_cfg, reference = load_policy(
        config, tokenizer, mesh, workdir, num_labels=num_labels
    )
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise ValueError(
            f"tokenizer {config.tokenizer!r} has {tokenizer.vocab_size} ids but the model's "
            f"vocab_size is {model_cfg.vocab_size}"
        )
    checkpointer = ckpt_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        every_steps=config.checkpoint_every_steps,
        keep=config.keep_checkpoints,
        async_save=config.checkpoint_async,
    )
    return RunContext(
        config=config,
        workdir=workdir,
        mesh=mesh,
        tokenizer=tokenizer,
        graphdef=graphdef,
        params=params,
        shardings=shardings,
        model_config=model_cfg,
        reference=reference,
        checkpointer=checkpointer,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        total_steps=config.num_train_steps if total_steps is None else total_steps,
    )
