"""Chunked token log-probs: equal to the naive computation in value and gradient, less memory."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignment import models
from alignment.models.logprobs import model_logprobs, naive_token_logprobs, token_logprobs


def _inputs(b=2, t=13, d=8, v=37, seed=0, dtype=jnp.float32):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    hidden = jax.random.normal(k1, (b, t, d), dtype)
    unembed = (jax.random.normal(k2, (d, v)) * 0.7).astype(dtype)
    labels = jax.random.randint(k3, (b, t), 0, v)
    mask = jax.random.bernoulli(k4, 0.7, (b, t)).astype(jnp.int32)
    return hidden, unembed, labels, mask


def _naive(hidden, unembed, labels, mask, **kw):
    logits = jnp.einsum("btd,dv->btv", hidden, unembed, preferred_element_type=jnp.float32)
    return naive_token_logprobs(logits, labels, mask, **kw)


@pytest.mark.parametrize("chunk_size,softcap", [(1, None), (5, None), (13, 2.0), (100, 2.0)])
def test_chunked_equals_naive(chunk_size, softcap):
    hidden, unembed, labels, mask = _inputs()
    logps, ent = jax.jit(
        lambda *a: token_logprobs(*a, chunk_size=chunk_size, softcap=softcap, return_entropy=True)
    )(hidden, unembed, labels, mask)
    ref_logps, ref_ent = _naive(hidden, unembed, labels, mask, softcap=softcap, return_entropy=True)
    assert logps.dtype == ent.dtype == jnp.float32
    np.testing.assert_allclose(logps, ref_logps, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ent, ref_ent, atol=1e-5, rtol=1e-5)
    assert np.all(np.asarray(logps)[np.asarray(mask) == 0] == 0)


def test_closed_forms():
    # Zero unembedding: uniform over V, so log p = -log V and entropy = log V everywhere.
    hidden, unembed, labels, _ = _inputs(v=50)
    logps, ent = token_logprobs(
        hidden, jnp.zeros_like(unembed), labels, chunk_size=4, return_entropy=True
    )
    np.testing.assert_allclose(logps, -math.log(50) * np.ones(labels.shape), rtol=1e-6)
    np.testing.assert_allclose(ent, math.log(50) * np.ones(labels.shape), rtol=1e-6)
    # Two-way logits (a, 0): log p(class 0) = -log(1 + e^-a).
    a = 1.7
    logits = jnp.array([[[a, 0.0]]])
    np.testing.assert_allclose(
        naive_token_logprobs(logits, jnp.array([[0]])), -math.log1p(math.exp(-a)), rtol=1e-6
    )


def test_bfloat16_hidden_matches_float32_logits_of_same_inputs():
    hidden, unembed, labels, mask = _inputs(dtype=jnp.bfloat16)
    logps = token_logprobs(hidden, unembed, labels, mask, chunk_size=4)
    assert logps.dtype == jnp.float32
    np.testing.assert_allclose(logps, _naive(hidden, unembed, labels, mask), atol=1e-5)


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_gradients_equal_naive(softcap):
    hidden, unembed, labels, mask = _inputs()
    weights = jax.random.normal(jax.random.key(9), labels.shape)

    def objective(fn):
        def f(h, w):
            logps, ent = fn(h, w, labels, mask, softcap=softcap, return_entropy=True)
            return jnp.sum(weights * logps) + 0.3 * jnp.sum(ent)

        return jax.grad(f, argnums=(0, 1))

    chunked = jax.jit(objective(lambda *a, **k: token_logprobs(*a, chunk_size=4, **k)))(
        hidden, unembed
    )
    naive = jax.jit(objective(_naive))(hidden, unembed)
    for got, want in zip(chunked, naive):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_jit_equals_eager():
    hidden, unembed, labels, mask = _inputs()
    eager = token_logprobs(hidden, unembed, labels, mask, chunk_size=4)
    jitted = jax.jit(lambda *a: token_logprobs(*a, chunk_size=4))(hidden, unembed, labels, mask)
    np.testing.assert_allclose(eager, jitted, atol=1e-6)


def test_peak_memory_is_chunked_forward_and_backward():
    # Full logits here are B*T*V*4 = 4 MiB; a 32-position chunk is 0.5 MiB. The compiled temporaries
    # must follow the chunk, in the backward pass too (the chunk body is rematerialised).
    b, t, d, v = 2, 256, 16, 2048
    hidden, unembed, labels, _ = _inputs(b, t, d, v)
    full_mib = b * t * v * 4 / 2**20

    def temp_mib(fn):
        loss = lambda h, w: fn(h, w).sum()  # noqa: E731
        fwd = jax.jit(loss).lower(hidden, unembed).compile().memory_analysis()
        bwd = (
            jax.jit(jax.grad(loss, argnums=(0, 1)))
            .lower(hidden, unembed)
            .compile()
            .memory_analysis()
        )
        return fwd.temp_size_in_bytes / 2**20, bwd.temp_size_in_bytes / 2**20

    chunked = temp_mib(lambda h, w: token_logprobs(h, w, labels, chunk_size=32))
    naive = temp_mib(lambda h, w: _naive(h, w, labels, None))
    assert naive[0] >= full_mib and naive[1] >= full_mib, naive
    assert chunked[0] < full_mib / 4 and chunked[1] < full_mib / 2, (chunked, full_mib)


def test_invalid_labels():
    hidden, unembed, labels, mask = _inputs()
    # Masked positions may carry anything (e.g. -100): they are exactly 0, never NaN.
    ignored = jnp.where(mask == 1, labels, -100)
    out = token_logprobs(hidden, unembed, ignored, mask, chunk_size=4)
    np.testing.assert_allclose(out, _naive(hidden, unembed, labels, mask), atol=1e-5)
    grads = jax.grad(
        lambda h, w: token_logprobs(h, w, ignored, mask, chunk_size=4).sum(), argnums=(0, 1)
    )(hidden, unembed)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    # An out-of-range label that is *not* masked surfaces as NaN rather than a clamped wrong value.
    bad = labels.at[0, 0].set(10_000)
    assert np.isnan(token_logprobs(hidden, unembed, bad, None, chunk_size=4)[0, 0])
    with pytest.raises(ValueError, match="labels shape"):
        token_logprobs(hidden, unembed, labels[:, :-1])
    with pytest.raises(ValueError, match=r"unembed shape \(9, 37\) must be \[D=8, V\]"):
        token_logprobs(hidden, jnp.zeros((9, 37)), labels)
    with pytest.raises(TypeError, match="integer token ids"):
        token_logprobs(hidden, unembed, labels.astype(jnp.float32))
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(hidden, unembed, labels, chunk_size=0)


# -- model_logprobs --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    config = models.get_preset("tiny-gemma2")  # has a final logit soft-cap
    return models.Transformer(config, rngs=nnx.Rngs(0))


def _jit_model_fn(model, fn, **static):
    """fn(model, *arrays, **static) jitted over the model's state (eager NNX calls are slow on CPU)."""
    graphdef, state = models.split(model)
    jitted = jax.jit(lambda state, *args: fn(models.merge(graphdef, state), *args, **static))
    return lambda *args: jitted(state, *args)


def _reference_logps(model, ids, attention_mask, loss_mask):
    """The convention spelled out on full logits: logps[:, t] = log_softmax(z[:, t-1])[x_t]."""
    logits = model(ids, attention_mask)
    logp_all = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    lp = jnp.take_along_axis(logp_all[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
    return jnp.pad(lp, ((0, 0), (1, 0))) * loss_mask


def test_model_logprobs_follows_convention(tiny_model):
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(3, 250, (3, 11)), jnp.int32)
    attention_mask = jnp.ones_like(ids).at[1, :4].set(0)  # row 1 left-padded
    loss_mask = attention_mask.at[:, :6].set(0)
    logps, ent = _jit_model_fn(tiny_model, model_logprobs, chunk_size=4, return_entropy=True)(
        ids, attention_mask, loss_mask
    )
    reference = _jit_model_fn(tiny_model, _reference_logps)(ids, attention_mask, loss_mask)
    np.testing.assert_allclose(logps, reference, atol=1e-5)
    assert np.all(np.asarray(logps[:, 0]) == 0) and np.all(
        np.asarray(ent)[np.asarray(loss_mask) == 0] == 0
    )
    assert np.all(np.asarray(ent)[np.asarray(loss_mask) == 1] > 0)


def test_model_logprobs_packed_segments(tiny_model):
    # Two documents packed in one row give the same per-token log-probs as each on its own row, and
    # the first token of the second document is not predicted from the first document.
    rng = np.random.default_rng(1)
    doc_a, doc_b = rng.integers(3, 250, 6), rng.integers(3, 250, 5)
    packed = jnp.asarray(np.concatenate([doc_a, doc_b])[None], jnp.int32)
    segment_ids = jnp.asarray([[1] * 6 + [2] * 5])
    positions = jnp.asarray([list(range(6)) + list(range(5))])
    ones = jnp.ones_like(packed)
    logprobs = _jit_model_fn(
        tiny_model,
        lambda m, ids, mask, seg, pos: model_logprobs(
            m, ids, mask, mask, segment_ids=seg, positions=pos, chunk_size=3
        ),
    )
    packed_logps = logprobs(packed, ones, segment_ids, positions)
    # The documents alone: right-padded to the packed length (cheaper than two more compiles).
    alone = jnp.asarray([np.pad(doc_a, (0, 5)), np.pad(doc_b, (0, 6))], jnp.int32)
    alone_mask = jnp.asarray([[1] * 6 + [0] * 5, [1] * 5 + [0] * 6])
    alone_logps = logprobs(
        alone, alone_mask, alone_mask, jnp.where(alone_mask == 1, jnp.arange(11), 0)
    )
    alone_a, alone_b = alone_logps[0:1, :6], alone_logps[1:2, :5]
    np.testing.assert_allclose(packed_logps, jnp.concatenate([alone_a, alone_b], axis=1), atol=1e-5)
    assert packed_logps[0, 6] == 0


def test_model_logprobs_jit_and_grad(tiny_model):
    graphdef, state = models.split(tiny_model)
    ids = jnp.asarray(np.random.default_rng(2).integers(3, 250, (2, 9)), jnp.int32)
    mask = jnp.ones_like(ids)

    def seq_logp(state, chunk_size):
        model = models.merge(graphdef, state)
        return model_logprobs(model, ids, mask, mask, chunk_size=chunk_size).sum()

    chunked = jax.jit(jax.value_and_grad(seq_logp), static_argnums=1)(state, 2)
    whole = jax.jit(jax.value_and_grad(seq_logp), static_argnums=1)(state, 100)
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-5)
    for got, want in zip(jax.tree.leaves(chunked[1]), jax.tree.leaves(whole[1])):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_without_remat_same_values_and_gradients_more_memory():
    # remat=False keeps every chunk's logits for the backward pass (saving their recomputation:
    # gpt2-small DPO step 1.109x -> 1.009x the analytic FLOPs in experiments.bench_train)
    b, t, d, v = 2, 256, 16, 2048
    hidden, unembed, labels, mask = _inputs(b, t, d, v)

    def step(remat):
        # a DPO-like loss needs the forward value too, so the forward chunk loop is live
        def loss(h, w):
            seq = token_logprobs(h, w, labels, mask, chunk_size=32, remat=remat).sum(-1)
            return -jax.nn.log_sigmoid(seq[0] - seq[1])

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

    got, want = step(False)(hidden, unembed), step(True)(hidden, unembed)
    for a, b_ in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b_, atol=1e-5, rtol=1e-5)
    keep, recompute = (
        step(r).lower(hidden, unembed).compile().memory_analysis().temp_size_in_bytes
        for r in (False, True)
    )
    full = b * t * v * 4
    assert keep >= full > 2 * recompute, (keep, recompute, full)
