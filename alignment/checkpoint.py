"""Orbax checkpoints of the train state plus the data-iterator position.

Layout: `WORKDIR/checkpoints/<step>/{state,data}`; `state` is the `TrainState` without the
frozen reference (re-created from the initial weights on resume), `data` a JSON dict holding
each process's iterator state. Orbax writes into a temporary directory and renames it on
commit, so a run killed mid-save leaves the previous checkpoint as the latest one.

Exports: `export_hf` writes a Hugging Face folder (`WORKDIR/hf`, `WORKDIR/reference_hf`) and
`write_run_record` the `WORKDIR/run.json` that `experiments.evaluate` reads.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
    """Save every `every_steps` (and whenever `force=True`), keep the newest `keep`."""

    def __init__(self, directory: str, *, every_steps: int, keep: int, async_save: bool = True):
        if every_steps <= 0:
            raise ValueError(f"checkpoint_every_steps must be positive, got {every_steps}")
        if keep <= 0:
            raise ValueError(f"keep_checkpoints must be positive, got {keep}")
        self.directory = os.path.abspath(directory)
        self.every_steps = every_steps
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=1, create=True,
            enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        return step % self.every_steps == 0

    def save(self, step: int, state, data_state: dict[str, Any]) -> bool:
        """Saves `state` (its `ref_params` dropped) and `data_state` (JSON-able) at `step`."""
        state = state.replace(ref_params=None) if hasattr(state, "ref_params") else state
        return self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

    def restore(self, step: int, abstract_state):
        """Returns `(state, data_state)`; `abstract_state` gives structure, dtypes and shardings
        (a pytree of `jax.ShapeDtypeStruct` with `.sharding`). The returned state has
        `ref_params=None`: the caller re-attaches its frozen reference."""
        target = abstract_state.replace(ref_params=None) if hasattr(abstract_state, "ref_params") else abstract_state
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        return restored["state"], restored["data"]

    def restore_latest(self, abstract_state):
        """`(step, state, data_state)` of the newest checkpoint, or None when there is none."""
        step = self.latest_step()
        if step is None:
            return None
        return (step, *self.restore(step, abstract_state))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def gather_data_states(local_state: dict[str, Any]) -> dict[str, Any]:
    """All processes' iterator states as `{"process_<i>": state}` (collective: every process
    calls it). One process needs no communication."""
    if jax.process_count() == 1:
        return {"process_0": local_state}
    from jax.experimental import multihost_utils
    blob = np.frombuffer(json.dumps(local_state).encode(), dtype=np.uint8)
    lengths = multihost_utils.process_allgather(np.asarray([blob.size], np.int32))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[:blob.size] = blob
    blobs = multihost_utils.process_allgather(padded)
    return {f"process_{i}": json.loads(bytes(blobs[i][:int(lengths[i].reshape(-1)[0])]).decode())
            for i in range(jax.process_count())}


def local_data_state(data_states: dict[str, Any]) -> dict[str, Any]:
    key = f"process_{jax.process_index()}"
    if key not in data_states:
        raise KeyError(f"checkpoint has data states for {sorted(data_states)} but this is {key}; "
                       "resume with the same distributed.num_processes")
    return data_states[key]


# ----------------------------------------------------------------------------- exports

RUN_RECORD = "run.json"


def export_hf(graphdef, params, path: str, *, tokenizer=None) -> None:
    """Writes `params` as a Hugging Face folder (plus the tokenizer's files when given) that
    `alignment.models.from_pretrained` and `transformers.AutoModelForCausalLM` load.

    Collective across processes (shards are gathered); process 0 writes into `path + ".tmp"`
    and renames it, so a run killed mid-export never leaves a half-written folder at `path`.
    """
    from alignment import models
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() != 0:
        return
    path = os.path.abspath(path)
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # pad_token_id: a *ForSequenceClassification export (reward model) needs it to pool padded rows
    models.save_pretrained(models.merge(graphdef, jax.device_get(params)), tmp,
                           pad_token_id=None if tokenizer is None else tokenizer.pad_id)
    if tokenizer is not None:
        tokenizer.save(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def write_run_record(workdir: str, record: dict[str, Any]) -> str:
    """Writes `WORKDIR/run.json` (what `experiments.evaluate` reads: reference, task, tokenizer,
    chat_template, loss) atomically; returns its path."""
    path = os.path.join(workdir, RUN_RECORD)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=str)
    os.replace(path + ".tmp", path)
    return path


def update_run_record(workdir: str, **fields: Any) -> str:
    """Adds `fields` to an existing `WORKDIR/run.json` (e.g. the task options a pipeline knows and
    its final training stage does not), atomically; returns its path."""
    path = os.path.join(workdir, RUN_RECORD)
    with open(path) as f:
        record = json.load(f)
    record.update(fields)
    return write_run_record(workdir, record)
