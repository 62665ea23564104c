"""Checkpoint digests: flipped bytes in a checkpoint's array data are caught on restore, and the
run resumes from the newest intact checkpoint (bitwise as if the damaged one never existed)."""

import json
import logging
import pathlib
import shutil
import socket

import engine_testlib as lib  # tests/ is on sys.path (conftest.py)
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alignment import checkpoint, learners
from alignment.types import TrainState
from configs import dpo


def _state(step):
    k = jax.random.PRNGKey(step)
    params = {"w": jax.random.normal(k, (16, 8)), "b": jnp.full((8,), float(step))}
    tx = optax.adamw(1e-3)
    return TrainState(
        step=jnp.int32(step),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.PRNGKey(step + 1),
        ref_params=None,
    )


def _abstract(state):
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), state)


def _array_data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    """The files holding the arrays' bytes (orbax/OCDBT data files, `state/**/d/*`)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no array data files under {step_dir}"
    return files


def _flip_bytes(path: pathlib.Path) -> None:
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    for i in range(mid, min(mid + 4, len(raw))):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def _saved(tmp_path, steps, *, async_save=False, keep=3):
    ck = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=keep, async_save=async_save)
    for step in steps:
        ck.save(step, _state(step), {"process_0": {"position": step}})
    ck.close()
    return checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=keep, async_save=async_save)


@pytest.mark.parametrize("async_save", [False, True])
def test_digest_written_for_each_kept_step(tmp_path, async_save):
    ck = _saved(tmp_path, (1, 2, 3, 4), async_save=async_save)
    assert ck.all_steps() == [2, 3, 4]
    for step in (2, 3, 4):
        record = json.loads((tmp_path / str(step) / checkpoint.DIGEST_FILE).read_text())
        assert record["step"] == step and record["algorithm"] == "sha256"
        assert any(rel.startswith("state/") for rel in record["files"])
        assert any(rel.startswith("data/") for rel in record["files"])
        assert ck.verify(step) is None
    step, state, data = ck.restore_latest(_abstract(_state(4)))
    ck.close()
    assert step == 4 and data == {"process_0": {"position": 4}}
    np.testing.assert_array_equal(np.asarray(state.params["w"]), np.asarray(_state(4).params["w"]))


def test_flipped_bytes_fall_back_to_newest_intact(tmp_path, caplog):
    ck = _saved(tmp_path, (1, 2, 3))
    for path in _array_data_files(tmp_path / "3"):
        _flip_bytes(path)
    assert "sha256 differs" in ck.verify(3)
    with caplog.at_level(logging.WARNING, logger="alignment.checkpoint"):
        step, state, data = ck.restore_latest(_abstract(_state(3)))
    assert step == 2 and data == {"process_0": {"position": 2}}
    for a, b in zip(jax.tree.leaves(_state(2)), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "checkpoint step 3" in warnings and "damaged" in warnings
    # the damaged step is moved aside (kept for inspection) so the resumed run can save it again
    assert ck.all_steps() == [1, 2] and ck.latest_step() == 2
    assert (tmp_path.parent / (tmp_path.name + ".damaged") / "3" / "state").is_dir()
    ck.save(3, _state(3), {"process_0": {"position": 3}})
    ck.close()
    assert checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=3).verify(3) is None


def test_every_checkpoint_damaged_is_a_clear_error(tmp_path):
    ck = _saved(tmp_path, (1, 2))
    _flip_bytes(_array_data_files(tmp_path / "1")[0])
    (tmp_path / "2" / "data" / "metadata").write_text('{"process_0": {"position": 99}}')
    with pytest.raises(checkpoint.CheckpointCorruptError, match=r"no intact checkpoint.*\[2, 1\]"):
        ck.restore_latest(_abstract(_state(2)))
    assert ck.all_steps() == [1, 2]  # nothing moved: a re-run fails the same way, never restarts
    ck.close()
    assert not (tmp_path.parent / (tmp_path.name + ".damaged")).exists()


def test_missing_or_unreadable_digest(tmp_path, caplog):
    ck = _saved(tmp_path, (1, 2))
    (tmp_path / "2" / checkpoint.DIGEST_FILE).unlink()  # e.g. killed before the digest was written
    with caplog.at_level(logging.WARNING, logger="alignment.checkpoint"):
        assert ck.verify(2) is None
    assert "restoring it unverified" in caplog.text
    (tmp_path / "1" / checkpoint.DIGEST_FILE).write_text("{not json")
    assert "unreadable" in ck.verify(1)
    (tmp_path / "2" / "state" / "extra").write_text("x")
    ck.close()
    assert (
        checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=3).restore_latest(
            _abstract(_state(2))
        )[0]
        == 2
    )


def test_fresh_directory_has_nothing_to_restore(tmp_path):
    ck = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=1)
    assert ck.restore_latest(_abstract(_state(0))) is None
    ck.close()


def _dpo_config(steps):
    config = dpo.get_config("tiny")
    config.unlock()
    config.num_train_steps = steps
    config.checkpoint_every_steps = 2
    config.keep_checkpoints = 3
    config.eval_every_steps = 0
    config.tensorboard = False
    config.progress_bar = False
    config.lock()
    return config


def test_run_resumes_from_intact_checkpoint_after_bytes_flipped(tmp_path, caplog):
    """End to end through `learners.run`: the newest checkpoint's array data is damaged after
    the run; re-running resumes from the older intact checkpoint, equal bitwise to a run resumed
    from that checkpoint with the newest one simply absent."""
    damaged, clean = tmp_path / "damaged", tmp_path / "clean"
    learners.run(_dpo_config(6), str(damaged))
    ckdir = damaged / "checkpoints"
    assert sorted(int(p.name) for p in ckdir.iterdir() if p.name.isdigit()) == [2, 4, 6]
    shutil.copytree(damaged, clean)
    shutil.rmtree(clean / "checkpoints" / "6")  # the reference: resume from step 4
    for path in _array_data_files(ckdir / "6"):
        _flip_bytes(path)

    with caplog.at_level(logging.WARNING, logger="alignment.checkpoint"):
        learners.run(_dpo_config(6), str(damaged))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("checkpoint step 6" in m and "damaged" in m for m in warnings), warnings
    learners.run(_dpo_config(6), str(clean))

    step, got = lib.final_params(damaged)
    ref_step, expected = lib.final_params(clean)
    assert step == ref_step == 6
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    assert all(np.isfinite(v).all() for v in got.values())


def test_two_processes_fall_back_together(tmp_path):
    """With two `jax.distributed` processes, process 0 verifies and moves the damaged step and
    both restore the same older step."""
    workdir = tmp_path / "run"
    args = (
        "--config.num_train_steps=4",
        "--config.checkpoint_every_steps=2",
        "--config.keep_checkpoints=3",
        "--config.eval_every_steps=0",
    )

    def run_two():
        with socket.socket() as s:
            s.bind(("localhost", 0))
            port = s.getsockname()[1]
        procs = [
            lib.run_train_cli(
                workdir,
                *args,
                "--config.distributed.num_processes=2",
                f"--config.distributed.process_id={i}",
                f"--config.distributed.coordinator_address=localhost:{port}",
                devices=4,
                wait=False,
            )
            for i in range(2)
        ]
        outs = [p.communicate(timeout=400)[0] for p in procs]
        for p, out in zip(procs, outs):
            assert p.returncode == 0, out[-4000:]
        return outs

    run_two()
    ckdir = workdir / "checkpoints"
    assert (ckdir / "4" / checkpoint.DIGEST_FILE).is_file()
    for path in _array_data_files(ckdir / "4"):
        _flip_bytes(path)
    outs = run_two()
    assert "checkpoint step 4" in outs[0] and "damaged" in outs[0]
    assert "resumed from step 2" in outs[0] and "resumed from step 2" in outs[1]
    assert (workdir / "checkpoints.damaged" / "4").is_dir()
    step, params = lib.final_params(workdir)
    assert step == 4 and all(np.isfinite(v).all() for v in params.values())
    assert checkpoint.Checkpointer(str(ckdir), every_steps=2, keep=3).verify(4) is None
