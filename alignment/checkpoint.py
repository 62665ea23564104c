"""Orbax checkpoints of the train state plus the data-iterator position, with digests.

Layout: `WORKDIR/checkpoints/<step>/{state,data,sha256.json}`; `state` is the `TrainState`
without the frozen reference (re-created from the initial weights on resume), `data` a JSON
dict holding each process's iterator state. Orbax writes into a temporary directory and
renames it on commit, so a run killed mid-save leaves the previous checkpoint as the latest one.

`sha256.json` holds the SHA-256 of every file under `state/` and `data/` (array data and
metadata). `Checkpointer.restore_latest` verifies it and falls back to the newest intact
checkpoint (a warning names the damaged step, whose directory moves to
`WORKDIR/checkpoints.damaged/<step>`), so flipped bytes in the array data are caught at resume
instead of one step later as a non-finite `param_norm`.

Exports: `export_hf` writes a Hugging Face folder (`WORKDIR/hf`, `WORKDIR/reference_hf`) and
`write_run_record` the `WORKDIR/run.json` that `experiments.evaluate` reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from alignment import models

log = logging.getLogger(__name__)

DIGEST_FILE = "sha256.json"
_HASHED_ITEMS = ("state", "data")  # the item directories orbax writes for one step
_CHUNK = 1 << 22


class CheckpointCorruptError(RuntimeError):
    """No checkpoint in the directory matches its digest."""


class Checkpointer:
    """Save every `every_steps` (and whenever `force=True`), keep the newest `keep`."""

    def __init__(self, directory: str, *, every_steps: int, keep: int, async_save: bool = True):
        if every_steps <= 0:
            raise ValueError(f"checkpoint_every_steps must be positive, got {every_steps}")
        if keep <= 0:
            raise ValueError(f"keep_checkpoints must be positive, got {keep}")
        self.directory = os.path.abspath(directory)
        self.every_steps = every_steps
        self._async = async_save
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=1,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=_HASHED_ITEMS
        )
        self._undigested: list[int] = []  # saved by this object, digest not yet written

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        return step % self.every_steps == 0

    def save(self, step: int, state, data_state: dict[str, Any]) -> bool:
        """Saves `state` (its `ref_params` dropped) and `data_state` (JSON-able) at `step`."""
        state = state.replace(ref_params=None) if hasattr(state, "ref_params") else state
        # orbax waits for the previous async save before starting this one anyway: waiting here
        # costs nothing and lets the previous step's digest be written now
        self.wait()
        saved = self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
            ),
            force=True,
        )
        if saved:
            self._undigested.append(step)
            if not self._async:
                self._write_digests()
        return saved

    def restore(self, step: int, abstract_state):
        """Returns `(state, data_state)`; `abstract_state` gives structure, dtypes and shardings
        (a pytree of `jax.ShapeDtypeStruct` with `.sharding`). The returned state has
        `ref_params=None`: the caller re-attaches its frozen reference."""
        target = (
            abstract_state.replace(ref_params=None)
            if hasattr(abstract_state, "ref_params")
            else abstract_state
        )
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["data"]

    def restore_latest(self, abstract_state):
        """The newest checkpoint that matches its digest, as `(step, state, data_states)`, or
        None when the directory holds no checkpoint (a fresh run). `abstract_state` and the
        returned state are as in `restore`.

        A checkpoint whose files differ from its `sha256.json` is logged (a warning naming the
        step and the file) and the next older one is tried; once an intact one is found, the
        damaged ones move to `<directory>.damaged/<step>` (so the resumed run can save those steps
        again). `CheckpointCorruptError` when none is intact (nothing is moved). A checkpoint
        without a digest (written by an older version, or the run stopped between an async
        save's commit and its digest) is restored with a warning.
        Collective: process 0 verifies and moves, every process restores the chosen step."""
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            return None
        chosen, damaged = -1, []
        if jax.process_index() == 0:
            for step in steps:
                problem = self.verify(step)
                if problem is None:
                    chosen = step
                    break
                damaged.append(step)
                log.warning(
                    "checkpoint step %d in %s is damaged (%s); falling back to the next "
                    "older checkpoint",
                    step,
                    self.directory,
                    problem,
                )
            if chosen >= 0:  # with none intact nothing moves: a re-run must not silently restart
                for step in damaged:
                    self._quarantine(step)
        if jax.process_count() > 1:
            chosen = int(multihost_utils.broadcast_one_to_all(np.int64(chosen)))
        if chosen < 0:
            raise CheckpointCorruptError(
                f"no intact checkpoint in {self.directory}: steps {steps} all differ from their "
                f"{DIGEST_FILE} (warnings above name the files); move the directory away to "
                "start the run over"
            )
        if damaged or jax.process_count() > 1:
            self._manager.reload()  # the damaged steps moved away (on process 0)
        if damaged:
            log.warning("resuming from step %d instead of the damaged step %d", chosen, damaged[0])
        state, data_states = self.restore(chosen, abstract_state)
        return chosen, state, data_states

    def verify(self, step: int) -> str | None:
        """None when checkpoint `step` matches its digest (or has none: a warning is logged);
        otherwise what differs, e.g. `state/d/0123...: sha256 differs from sha256.json`."""
        step_dir = os.path.join(self.directory, str(step))
        path = os.path.join(step_dir, DIGEST_FILE)
        if not os.path.isfile(path):
            log.warning(
                "checkpoint step %d in %s has no %s (an older version wrote it, or the "
                "run stopped before its digest was written): restoring it unverified",
                step,
                self.directory,
                DIGEST_FILE,
            )
            return None
        try:
            with open(path) as f:
                expected = json.load(f)["files"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"{DIGEST_FILE} unreadable: {e}"
        actual = _file_digests(step_dir)
        for rel in sorted(set(expected) | set(actual)):
            if rel not in actual:
                return f"{rel}: missing"
            if rel not in expected:
                return f"{rel}: not in {DIGEST_FILE}"
            if actual[rel] != expected[rel]:
                return f"{rel}: sha256 differs from {DIGEST_FILE}"
        return None

    def wait(self) -> None:
        """Blocks until pending saves are committed, then writes their digests."""
        self._manager.wait_until_finished()
        self._write_digests()

    def close(self) -> None:
        self.wait()
        self._manager.close()

    def _write_digests(self) -> None:
        """Writes `sha256.json` for the steps saved since the last call.

        Why files hashed after the commit, by process 0: with async saves the arrays are written
        by a background thread after `save` returns, and with several processes each writes its
        own shards to the shared directory, so no single process holds the bytes while saving.
        After `wait_until_finished` the step directory is committed (orbax renames it only once
        every process has finished), so process 0 hashes exactly the files a restore will read,
        whatever wrote them. Digests of the host arrays would need every shard gathered on one
        host and would not cover the files' bytes."""
        steps, self._undigested = self._undigested, []
        if jax.process_index() != 0:
            return
        kept = set(self.all_steps())
        for step in steps:
            step_dir = os.path.join(self.directory, str(step))
            if step not in kept or not os.path.isdir(step_dir):
                continue  # already removed by max_to_keep
            record = {"step": step, "algorithm": "sha256", "files": _file_digests(step_dir)}
            tmp = os.path.join(step_dir, DIGEST_FILE + ".tmp")
            with open(tmp, "w") as f:
                json.dump(record, f, indent=1, sort_keys=True)
            os.replace(tmp, os.path.join(step_dir, DIGEST_FILE))

    def _quarantine(self, step: int) -> None:
        """Moves a damaged step out of orbax's directory (kept for inspection)."""
        dest_root = self.directory + ".damaged"
        os.makedirs(dest_root, exist_ok=True)
        dest, n = os.path.join(dest_root, str(step)), 1
        while os.path.exists(dest):
            dest, n = os.path.join(dest_root, f"{step}.{n}"), n + 1
        os.replace(os.path.join(self.directory, str(step)), dest)
        log.warning("moved damaged checkpoint step %d to %s", step, dest)


def _file_digests(step_dir: str) -> dict[str, str]:
    """SHA-256 of every file under the step's item directories, keyed by relative path."""
    out = {}
    for item in _HASHED_ITEMS:
        for root, _, files in os.walk(os.path.join(step_dir, item)):
            for name in files:
                full = os.path.join(root, name)
                h = hashlib.sha256()
                with open(full, "rb") as f:
                    for chunk in iter(lambda: f.read(_CHUNK), b""):
                        h.update(chunk)
                out[os.path.relpath(full, step_dir)] = h.hexdigest()
    return out


def gather_data_states(local_state: dict[str, Any]) -> dict[str, Any]:
    """All processes' iterator states as `{"process_<i>": state}` (collective: every process
    calls it). One process needs no communication."""
    if jax.process_count() == 1:
        return {"process_0": local_state}
    blob = np.frombuffer(json.dumps(local_state).encode(), dtype=np.uint8)
    lengths = multihost_utils.process_allgather(np.asarray([blob.size], np.int32))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[: blob.size] = blob
    blobs = multihost_utils.process_allgather(padded)
    return {
        f"process_{i}": json.loads(bytes(blobs[i][: int(lengths[i].reshape(-1)[0])]).decode())
        for i in range(jax.process_count())
    }


def local_data_state(data_states: dict[str, Any]) -> dict[str, Any]:
    key = f"process_{jax.process_index()}"
    if key not in data_states:
        raise KeyError(
            f"checkpoint has data states for {sorted(data_states)} but this is {key}; "
            "resume with the same distributed.num_processes"
        )
    return data_states[key]


# ----------------------------------------------------------------------------- exports

RUN_RECORD = "run.json"


def export_hf(graphdef, params, path: str, *, tokenizer=None) -> None:
    """Writes `params` as a Hugging Face folder (plus the tokenizer's files when given) that
    `alignment.models.from_pretrained` and `transformers.AutoModelForCausalLM` load.

    Collective across processes (shards are gathered); process 0 writes into `path + ".tmp"`
    and renames it, so a run killed mid-export never leaves a half-written folder at `path`.
    """
    if jax.process_count() > 1:
        params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() != 0:
        return
    path = os.path.abspath(path)
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # pad_token_id: a *ForSequenceClassification export (reward model) needs it to pool padded rows
    models.save_pretrained(
        models.merge(graphdef, jax.device_get(params)),
        tmp,
        pad_token_id=None if tokenizer is None else tokenizer.pad_id,
    )
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
