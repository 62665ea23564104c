"""The NNX transformer: invariances (scan/remat/jit/padding/packing/cache) and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignment.models import PRESETS, Transformer, get_preset, merge, split

FAMILY_PRESETS = ["tiny", "tiny-qwen3", "tiny-gemma2", "tiny-gpt2"]


def _model(name="tiny", seed=0, **overrides):
    return Transformer(get_preset(name, **overrides), rngs=nnx.Rngs(seed))


def _ids(b=2, t=12, vocab=256, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(0, vocab, (b, t)), jnp.int32)


def _jit_logits(model, ids, mask=None, positions=None, segment_ids=None, **kwargs):
    """Jitted forward (eager op-by-op dispatch is far slower on CPU)."""
    graphdef, state = split(model)
    fn = lambda st, i, m, p, s: merge(graphdef, st)(i, m, positions=p, segment_ids=s, **kwargs)
    return jax.jit(fn)(state, ids, mask, positions, segment_ids)


@pytest.mark.parametrize("name", FAMILY_PRESETS)
def test_scan_and_remat_give_identical_logits(name):
    ids = _ids()
    mask = jnp.ones_like(ids).at[0, :3].set(0)
    ref = _jit_logits(_model(name), ids, mask)
    assert ref.shape == (2, 12, 256) and ref.dtype == jnp.float32
    combos = (
        [(True, "none"), (False, "full"), (True, "dots_saveable")]
        if name == "tiny"
        else [(True, "none")]
    )
    for scan, remat in combos:
        out = _jit_logits(_model(name, scan_layers=scan, remat_policy=remat), ids, mask)
        np.testing.assert_allclose(out, ref, atol=1e-6, err_msg=f"scan={scan} remat={remat}")


def test_remat_gradients_match():
    ids = _ids(t=8)

    def grads(model):
        graphdef, state = split(model)
        loss = lambda st: jnp.mean(merge(graphdef, st)(ids) ** 2)
        return jax.tree.leaves(jax.jit(jax.grad(loss))(state))

    for a, b in zip(
        grads(_model(scan_layers=True)), grads(_model(scan_layers=True, remat_policy="full"))
    ):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_jit_equals_eager():
    model, ids = _model("tiny-gemma2", n_layers=1, layer_types=None), _ids(t=6)
    np.testing.assert_allclose(_jit_logits(model, ids), model(ids), atol=1e-5)


def test_left_and_right_padding_agree_on_real_tokens():
    model = _model("tiny-gemma2")  # sliding window 8 < length: windows are on positions
    real = _ids(b=1, t=10)[0]
    n_pad = 4
    left = jnp.concatenate([jnp.zeros(n_pad, jnp.int32), real])[None]
    right = jnp.concatenate([real, jnp.zeros(n_pad, jnp.int32)])[None]
    mask_l = jnp.concatenate([jnp.zeros(n_pad), jnp.ones(10)])[None].astype(jnp.int32)
    mask_r = mask_l[:, ::-1]
    out_l, out_r = _jit_logits(model, left, mask_l), _jit_logits(model, right, mask_r)
    np.testing.assert_allclose(out_l[0, n_pad:], out_r[0, :10], atol=1e-5)
    np.testing.assert_allclose(out_r[0, :10], _jit_logits(model, real[None])[0], atol=1e-5)
    assert np.isfinite(np.asarray(out_l)).all(), "fully masked padding queries must not produce NaN"


@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2"])
def test_segment_ids_block_cross_document_attention(name):
    model = _model(name)
    doc1, doc2 = _ids(b=1, t=5, seed=1)[0], _ids(b=1, t=4, seed=2)[0]
    packed = jnp.concatenate([doc1, doc2, jnp.zeros(3, jnp.int32)])[None]
    seg = jnp.asarray([[1] * 5 + [2] * 4 + [0] * 3])
    pos = jnp.asarray([list(range(5)) + list(range(4)) + [0] * 3])
    mask = (seg > 0).astype(jnp.int32)
    out = _jit_logits(model, packed, mask, pos, seg)
    np.testing.assert_allclose(out[0, 5:9], _jit_logits(model, doc2[None])[0], atol=1e-5)
    np.testing.assert_allclose(out[0, :5], _jit_logits(model, doc1[None])[0], atol=1e-5)
    # Without segment ids doc 2 does see doc 1: the test would catch a no-op mask.
    leaky = _jit_logits(model, packed, mask, pos)
    assert np.abs(np.asarray(leaky[0, 5:9] - out[0, 5:9])).max() > 1e-3


@pytest.mark.parametrize(
    "name,scan",
    [("tiny", False), ("tiny-gemma2", True), ("tiny-qwen3", True), ("tiny-gpt2", False)],
)
def test_kv_cache_prefill_and_decode_reproduce_full_forward(name, scan):
    model = _model(name, scan_layers=scan)
    ids = _ids(b=2, t=14)
    mask = jnp.ones_like(ids).at[0, :4].set(0)  # row 0 left-padded prompt
    full = _jit_logits(model, ids, mask)
    graphdef, state = split(model)

    @jax.jit
    def step(st, ids, mask, cache):
        return merge(graphdef, st)(ids, mask, cache=cache)

    cache = model.init_cache(2, 16)
    assert cache["k"].shape == (
        model.config.n_layers,
        2,
        16,
        model.config.n_kv_heads,
        model.config.head_dim,
    )
    logits, cache = step(state, ids[:, :8], mask[:, :8], cache)
    pieces = [logits]
    for i in range(8, 14):
        logits, cache = step(state, ids[:, i : i + 1], mask[:, i : i + 1], cache)
        pieces.append(logits)
    assert int(cache["index"]) == 14
    np.testing.assert_array_equal(cache["pos"][0, :14], [-1] * 4 + list(range(10)))
    np.testing.assert_array_equal(cache["pos"][:, 14:], -1)
    got = jnp.concatenate(pieces, axis=1)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(full)[real], atol=1e-5)


def test_call_with_transformers_style_keywords():
    """`model(input_ids=..., attention_mask=...)` as in transformers; the keywords reach the mask,
    positions, segment ids and cache (a left-padded row equals the same tokens unpadded)."""
    model = _model(n_layers=1)
    real = _ids(b=1, t=6)
    ids = jnp.concatenate([jnp.zeros((1, 2), jnp.int32), real], axis=1)
    mask = jnp.asarray([[0, 0] + [1] * 6], jnp.int32)
    out = model(input_ids=ids, attention_mask=mask)
    assert out.shape == (1, 8, model.config.vocab_size)
    np.testing.assert_allclose(out[0, 2:], model(input_ids=real)[0], atol=1e-5)
    unmasked = model(input_ids=ids)
    assert np.abs(np.asarray(unmasked[0, 2:] - out[0, 2:])).max() > 1e-3  # the mask is not ignored
    pos = jnp.asarray([[0, 0, 0, 1, 2, 3, 4, 5]], jnp.int32)
    seg = jnp.asarray([[0, 0, 1, 1, 1, 2, 2, 2]], jnp.int32)
    packed = model(input_ids=ids, attention_mask=mask, positions=pos, segment_ids=seg)
    np.testing.assert_allclose(packed[0, 2:5], out[0, 2:5], atol=1e-5)
    spread = model(input_ids=ids, attention_mask=mask, positions=2 * pos)  # rope is relative
    assert np.abs(np.asarray(spread[0, 3:] - out[0, 3:])).max() > 1e-3  # positions are used
    logits, cache = model(input_ids=ids, attention_mask=mask, cache=model.init_cache(1, 8))
    np.testing.assert_allclose(logits, out, atol=1e-5)
    assert int(cache["index"]) == 8
    hidden = model(input_ids=ids, attention_mask=mask, return_hidden=True)
    np.testing.assert_allclose(model.logits_from_hidden(hidden=hidden), out, atol=1e-5)


def test_cache_overflow_is_an_eager_error():
    model = _model()
    cache = model.init_cache(1, 4)
    graphdef, state = split(model)
    _, cache = jax.jit(lambda st, ids, c: merge(graphdef, st)(ids, cache=c))(
        state, _ids(b=1, t=3), cache
    )
    with pytest.raises(ValueError, match="KV cache overflow"):
        model(_ids(b=1, t=2), cache=cache)


def test_out_of_vocab_ids_are_an_error():
    model = _model()
    with pytest.raises(
        ValueError, match=r"token id 256 at \(row, col\) \(1, 2\).*vocabulary \[0, 256\)"
    ):
        model(jnp.zeros((2, 4), jnp.int32).at[1, 2].set(256))
    with pytest.raises(ValueError, match="token id -1"):
        model(jnp.full((1, 3), -1))


def test_fused_attention_matches_einsum():
    ids = _ids()
    mask = jnp.ones_like(ids).at[1, 9:].set(0)
    ref = _jit_logits(_model("tiny", attention_impl="einsum"), ids, mask)
    out = _jit_logits(_model("tiny", attention_impl="fused"), ids, mask)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], atol=1e-5)


def test_hidden_states_and_unembed_give_the_logits():
    model = _model("tiny-gemma2")
    ids = _ids()
    hidden = _jit_logits(model, ids, return_hidden=True)
    assert hidden.shape == (2, 12, 64)
    w = model.unembed_weight()
    assert w.shape == (64, 256)
    head = jax.jit(lambda h: model.logits_from_hidden(h))
    np.testing.assert_allclose(head(hidden), _jit_logits(model, ids), atol=1e-6)
    # Gemma2's final soft-cap bounds the logits by 30.
    assert float(jnp.abs(head(hidden * 1e4)).max()) <= 30.0


@pytest.mark.parametrize("scan", [False, True])
def test_every_parameter_has_logical_axes(scan):
    model = _model("tiny-gpt2", scan_layers=scan)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = var.get_metadata()["logical_axes"]
        assert len(axes) == var[...].ndim, path
        if scan and path[0] == "layers":
            assert axes[0] == "layers" and var[...].shape[0] == model.config.n_layers, path


def test_presets_build_with_the_published_parameter_counts():
    # Published sizes; update only if a preset's shapes are deliberately changed.
    expected = {
        "llama3-8b": 8_030_261_248,
        "qwen3-0.6b": 596_049_920,
        "gemma2-2b": 2_614_341_888,
        "gpt2-small": 124_439_808,
    }
    for name, count in expected.items():
        cfg = get_preset(name, scan_layers=True)
        abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
        n = sum(v.get_value().size for _, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
        assert n == count == cfg.num_params(), name
    assert "tiny" in PRESETS and PRESETS["tiny"].d_model <= 64 and PRESETS["tiny"].vocab_size == 256


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="unknown model preset 'nope'"):
        get_preset("nope")
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        get_preset("tiny", n_layerz=3)
    with pytest.raises(ValueError, match="ModelConfig.rope_type='yarn'"):
        get_preset("tiny", rope_type="yarn")
    with pytest.raises(ValueError, match="n_kv_heads"):
        get_preset("tiny", n_heads=4, n_kv_heads=3)
    hash(get_preset("tiny"))  # usable as a jit static argument
