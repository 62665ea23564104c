"""The model under a mesh of 8 fake CPU devices: FSDP and tensor-parallel rules give unsharded logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alignment.models import (
    Transformer,
    create_sharded,
    from_pretrained,
    get_preset,
    merge,
    save_pretrained,
    split,
)
from alignment.sharding import batch_sharding, make_mesh, state_shardings

MESHES = [{"data": 1, "fsdp": 8, "tensor": 1}, {"data": 1, "fsdp": 2, "tensor": 4}]


def _logits(model, ids, mask, mesh=None):
    graphdef, state = split(model)
    fn = jax.jit(lambda st, i, m: merge(graphdef, st)(i, m))
    if mesh is not None:
        ids, mask = (jax.device_put(x, batch_sharding(mesh)) for x in (ids, mask))
    return np.asarray(fn(state, ids, mask))


def _batch():
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 256, (8, 12)), jnp.int32)
    return ids, jnp.ones_like(ids).at[0, :5].set(0).at[3, 7:].set(0)


@pytest.mark.parametrize("mesh_cfg", MESHES, ids=["fsdp8", "fsdp2_tp4"])
def test_sharded_model_matches_unsharded(mesh_cfg):
    assert jax.device_count() == 8, "tests/conftest.py must set 8 fake CPU devices"
    cfg = get_preset("tiny-gemma2", scan_layers=True)
    mesh = make_mesh(mesh_cfg)
    model = create_sharded(cfg, mesh, seed=3)
    # Created already on its shardings: the embedding [V, D] is split over (tensor, fsdp).
    embed = model.embed[...]
    expected = P("tensor" if mesh_cfg["tensor"] > 1 else None, "fsdp")
    assert embed.sharding.is_equivalent_to(NamedSharding(mesh, expected), 2)
    assert len({s.device for s in embed.addressable_shards}) == 8
    shards = state_shardings(nnx.state(model), mesh)
    for (path, var), (_, sh) in zip(nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(shards)):
        assert var[...].sharding.is_equivalent_to(sh, var[...].ndim), path

    reference = Transformer(cfg, rngs=nnx.Rngs(3))  # same seed, built whole on one device
    ids, mask = _batch()
    want = _logits(reference, ids, mask)
    got = _logits(model, ids, mask, mesh)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-5)


def test_from_pretrained_places_tensors_on_the_mesh(tmp_path):
    cfg = get_preset("tiny")
    model = Transformer(cfg, rngs=nnx.Rngs(1))
    save_pretrained(model, tmp_path)
    mesh = make_mesh(MESHES[1])
    loaded = from_pretrained(tmp_path, mesh=mesh, scan_layers=True)
    q = loaded.layers.attn.q[...]  # stacked [L, D, N, H] with heads on tensor, embed on fsdp
    assert q.shape == (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.head_dim)
    assert q.sharding.is_equivalent_to(NamedSharding(mesh, P(None, "fsdp", "tensor", None)), 4)
    ids, mask = _batch()
    np.testing.assert_allclose(
        _logits(loaded, ids, mask, mesh), _logits(model, ids, mask), atol=1e-5
    )
