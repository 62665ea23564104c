"""Orbax checkpoints: state + data position round-trip, retention, reference not stored."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alignment import checkpoint, sharding
from alignment.types import TrainState


def _state(seed=0):
    k = jax.random.PRNGKey(seed)
    params = {
        "layers": {0: {"w": jax.random.normal(k, (8, 4))}, 1: {"w": jnp.ones((8, 4))}},
        "b": jnp.arange(4.0),
    }
    tx = optax.adamw(1e-3)
    return TrainState(
        step=jnp.int32(5),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.PRNGKey(seed + 1),
        ref_params=jax.tree.map(jnp.copy, params),
    )


def test_roundtrip_restores_sharded_state_and_data_position(tmp_path):
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    state = _state()
    fsdp = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
    state = state.replace(
        params=jax.tree.map(
            lambda x: jax.device_put(x, fsdp if x.ndim == 2 else sharding.replicated(mesh)),
            state.params,
        )
    )
    ck = checkpoint.Checkpointer(str(tmp_path), every_steps=5, keep=2)
    assert ck.latest_step() is None and ck.should_save(10) and not ck.should_save(7)
    ck.save(5, state, {"process_0": {"position": 17, "epoch": 1}})
    ck.wait()
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
    restored, data = ck.restore(ck.latest_step(), abstract)
    ck.close()
    assert data == {"process_0": {"position": 17, "epoch": 1}}
    assert restored.ref_params is None  # never stored: re-created from the initial weights
    for a, b in zip(jax.tree.leaves(state.replace(ref_params=None)), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding == b.sharding
    assert checkpoint.local_data_state(data) == {"position": 17, "epoch": 1}


def test_keeps_newest_and_ignores_unfinished_saves(tmp_path):
    ck = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=2, async_save=False)
    for step in (1, 2, 3):
        ck.save(step, _state(step), {"process_0": {"step": step}})
    ck.wait()
    assert ck.all_steps() == [2, 3]
    ck.close()
    # a save killed mid-write leaves only orbax's temporary directory behind
    os.makedirs(tmp_path / "4.orbax-checkpoint-tmp" / "state")
    ck = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=2)
    assert ck.latest_step() == 3
    ck.close()


def test_bad_arguments_and_wrong_process_count(tmp_path):
    with pytest.raises(ValueError, match="checkpoint_every_steps"):
        checkpoint.Checkpointer(str(tmp_path), every_steps=0, keep=1)
    with pytest.raises(ValueError, match="keep_checkpoints"):
        checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=0)
    with pytest.raises(KeyError, match="same distributed.num_processes"):
        checkpoint.local_data_state({"process_1": {}})
