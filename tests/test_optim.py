"""optax chain from config: schedules, clipping, weight-decay mask, frozen parameters."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from alignment import optim


def _cfg(**kw):
    base = dict(
        name="adamw",
        learning_rate=1e-2,
        schedule="cosine",
        warmup_steps=4,
        end_lr_factor=0.1,
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        weight_decay=0.0,
        decay_min_ndim=2,
        no_decay_regex=r"(norm|bias|embed)",
        max_grad_norm=0.0,
        freeze_regex="",
    )
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _params():
    return {
        "embed": {"embedding": jnp.ones((5, 3))},
        "layers": {
            0: {
                "attn": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones((3,))},
                "norm": {"scale": jnp.ones((2, 3))},
            }
        },
        "head": {"kernel": jnp.ones((3, 5))},
    }


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
def test_schedule_warmup_then_decay_to_end(kind):
    s = optim.make_schedule(_cfg(schedule=kind), num_train_steps=20)
    assert float(s(0)) == 0.0
    np.testing.assert_allclose(float(s(2)), 5e-3, rtol=1e-6)  # halfway through the linear warmup
    np.testing.assert_allclose(float(s(4)), 1e-2, rtol=1e-6)
    end = 1e-2 if kind == "constant" else 1e-3
    np.testing.assert_allclose(float(s(20)), end, rtol=1e-5)


def test_schedule_rejects_bad_values():
    with pytest.raises(ValueError, match="optim.schedule"):
        optim.make_schedule(_cfg(schedule="exp"), 10)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.make_schedule(_cfg(warmup_steps=11), 10)


def test_decay_mask_skips_norms_biases_embeddings_and_1d():
    mask = optim.decay_mask(_params(), _cfg())
    flat = {optim.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert flat == {
        "embed/embedding": False,
        "layers/0/attn/kernel": True,
        "layers/0/attn/bias": False,
        "layers/0/norm/scale": False,
        "head/kernel": True,
    }


def test_weight_decay_applies_only_where_masked():
    params = _params()
    tx = optim.make_optimizer(
        _cfg(weight_decay=0.5, warmup_steps=0, schedule="constant"), params, 10
    )
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    # zero gradients: the only update is the decoupled decay -lr * wd * p
    np.testing.assert_allclose(updates["head"]["kernel"], -1e-2 * 0.5 * np.ones((3, 5)), rtol=1e-6)
    assert float(jnp.abs(updates["layers"][0]["norm"]["scale"]).max()) == 0.0
    assert float(jnp.abs(updates["embed"]["embedding"]).max()) == 0.0


def test_frozen_parameters_do_not_move_and_do_not_count_for_clipping():
    params = _params()
    cfg = _cfg(freeze_regex=r"^embed/", max_grad_norm=1.0, warmup_steps=0, schedule="constant")
    tx = optim.make_optimizer(cfg, params, 10)
    grads = jax.tree.map(lambda x: jnp.full_like(x, 3.0), params)
    grads["embed"]["embedding"] = jnp.full(
        (5, 3), 1e6
    )  # would dominate the clipping norm if counted
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(jnp.abs(updates["embed"]["embedding"]).max()) == 0.0
    # Adam's first step is lr * sign(g) whatever the clipping scale: trainable leaves move by lr.
    np.testing.assert_allclose(updates["head"]["kernel"], -1e-2, rtol=1e-4)
    trainable = {k: v for k, v in grads.items() if k != "embed"}
    clipped, _ = optax.clip_by_global_norm(1.0).update(trainable, None)
    assert float(optax.global_norm(clipped)) == pytest.approx(1.0, rel=1e-5)


def test_freezing_everything_is_an_error():
    with pytest.raises(ValueError, match="freezes every parameter"):
        optim.make_optimizer(_cfg(freeze_regex="."), _params(), 10)
