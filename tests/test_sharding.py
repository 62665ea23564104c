"""Rule table, params born sharded, and sharded steps equal to the one-device step."""

import engine_testlib as lib  # tests/ is on sys.path (conftest.py)
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from alignment import engine as T
from alignment import optim, sharding
from alignment.learners import offline


def test_logical_to_spec_rules_and_divisibility_fallback():
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    assert sharding.logical_to_spec(("embed", "mlp"), (32, 64), mesh) == P("fsdp", "tensor")
    # 2 kv heads do not divide over tensor=4: replicated rather than failing
    assert sharding.logical_to_spec(("embed", "kv_heads", "head_dim"), (32, 2, 8), mesh) == P(
        "fsdp", None, None
    )
    assert sharding.logical_to_spec(("batch", "length"), (8, 32), mesh) == P("fsdp", None)
    with pytest.raises(ValueError, match="no rule"):
        sharding.logical_to_spec(("nope",), (4,), mesh)


def test_mesh_shape_fills_and_rejects():
    assert sharding.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="set one of"):
        sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="at most one"):
        sharding.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)


def test_params_are_created_sharded():
    mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    _, params, shardings = T.init_params(lib.tiny_model(), mesh, seed=0)
    specs = {
        optim.path_str(p): x.sharding.spec
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    assert any("fsdp" in str(s) for s in specs.values()), specs
    assert any("tensor" in str(s) for s in specs.values()), specs
    for p, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        # each device holds only its shard: nothing was materialised whole on one device
        assert x.addressable_shards[0].data.size * len(x.sharding.device_set) >= x.size


def _run(mesh_cfg, devices, batch, steps=2):
    mesh = sharding.make_mesh(mesh_cfg, devices=devices)
    graphdef, params, shardings = T.init_params(lib.tiny_model(), mesh, seed=0)
    # a small step: Adam's g/sqrt(v) amplifies float32 reduction-order noise in tiny gradients
    tx = optim.make_optimizer(lib.optim_cfg(learning_rate=1e-3), params, 10)
    state, st_sh = T.create_train_state(params, shardings, tx, mesh, seed=0, with_reference=True)
    logprob_fn = T.make_logprob_fn(graphdef, chunk_size=16)
    loss_fn = lambda p, ref, b: offline.preference_loss(  # noqa: E731
        logprob_fn,
        p,
        b,
        loss_fn=lib.local_dpo,
        loss_kwargs={},
        reference_mode="in_step",
        ref_params=ref,
    )
    b_sh = T.batch_shardings_for(batch, mesh)
    step = T.make_train_step(loss_fn, tx, state_shardings=st_sh, batch_shardings=b_sh, mesh=mesh)
    losses = []
    for _ in range(steps):
        state, m = step(state, T.to_global(batch, b_sh))
        losses.append(float(m["loss"]))
    params = {
        optim.path_str(p): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]
    }
    ref = {
        optim.path_str(p): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(state.ref_params)[0]
    }
    return losses, params, ref


def test_fsdp_and_tensor_parallel_steps_equal_one_device():
    batch = lib.random_pairs(seed=1)
    base_losses, base_params, base_ref = _run(
        {"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1], batch
    )
    assert base_losses[0] == pytest.approx(np.log(2.0), abs=1e-6)  # policy == reference at step 1
    assert base_losses[1] < base_losses[0]
    for mesh_cfg in ({"data": 1, "fsdp": 8, "tensor": 1}, {"data": 2, "fsdp": 1, "tensor": 4}):
        losses, params, ref = _run(mesh_cfg, None, batch)
        np.testing.assert_allclose(losses, base_losses, atol=1e-5, err_msg=str(mesh_cfg))
        for k in base_params:
            np.testing.assert_allclose(
                params[k], base_params[k], atol=1e-5, err_msg=f"{mesh_cfg} {k}"
            )
            np.testing.assert_array_equal(ref[k], base_ref[k])  # the frozen reference never moves
    assert any(not np.array_equal(base_params[k], base_ref[k]) for k in base_params)
