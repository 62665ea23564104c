"""The scalar (reward / value) head: `Transformer.scores`, `sequence_scores`, `token_values`, and
its Hugging Face interop as `*ForSequenceClassification` (`score.weight`), checked against
transformers on tiny random models.

If the parity test fails after a transformers upgrade, compare how the classifier picks its
pooled token (`GenericForSequenceClassification.forward`) with `alignment.models.heads`."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignment import models, sharding
from alignment.models import heads

V, PAD = 96, 0


def _cfg(**kw):
    base = dict(
        vocab_size=V,
        d_model=32,
        d_ff=64,
        head_dim=8,
        n_heads=4,
        n_kv_heads=2,
        n_layers=2,
        max_seq_len=32,
        num_labels=1,
        has_lm_head=False,
    )
    base.update(kw)
    return models.get_preset("tiny", **base)


def _batch():
    rng = np.random.RandomState(0)
    ids = rng.randint(1, V, (3, 10)).astype(np.int32)  # no pad id among real tokens
    mask = np.ones((3, 10), np.int32)
    mask[0, :3] = 0  # left padding
    mask[1, 6:] = 0  # right padding
    return np.where(mask == 1, ids, PAD), mask


def test_config_checks_and_param_count():
    with pytest.raises(ValueError, match="has_lm_head=False needs num_labels"):
        _cfg(num_labels=0)
    with pytest.raises(ValueError, match="num_labels must be an int"):
        _cfg(num_labels=-1)
    cfg = _cfg()
    model = models.Transformer(cfg, rngs=nnx.Rngs(0))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n == cfg.num_params()
    assert not hasattr(model, "lm_head") and model.score[...].shape == (32, 1)
    assert model.score.get_metadata()["logical_axes"] == ("embed", "value_head")
    with pytest.raises(ValueError, match="no LM head"):
        model.unembed_weight()
    lm = models.Transformer(_cfg(num_labels=0, has_lm_head=True), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no score head"):
        lm.scores(jnp.zeros((1, 2, 32)))


def test_adding_the_head_keeps_the_backbone_of_the_same_seed():
    lm = models.Transformer(_cfg(num_labels=0, has_lm_head=True), rngs=nnx.Rngs(3))
    both = models.Transformer(_cfg(has_lm_head=True), rngs=nnx.Rngs(3))
    a = nnx.to_pure_dict(nnx.state(lm, nnx.Param))
    b = nnx.to_pure_dict(nnx.state(both, nnx.Param))
    assert set(b) - set(a) == {"score"}
    for x, y in zip(
        jax.tree.leaves(a), jax.tree.leaves({k: v for k, v in b.items() if k != "score"})
    ):
        np.testing.assert_array_equal(x, y)


def test_sequence_scores_pick_the_last_real_token_and_match_token_values():
    model = models.Transformer(_cfg(), rngs=nnx.Rngs(1))
    ids, mask = _batch()
    last = np.asarray(heads.last_token_index(attention_mask=mask))
    np.testing.assert_array_equal(last, [9, 5, 9])
    s = np.asarray(models.sequence_scores(model, input_ids=ids, attention_mask=mask))
    v = np.asarray(models.token_values(model, input_ids=ids, attention_mask=mask))
    assert s.shape == (3,) and v.shape == (3, 10) and s.dtype == np.float32
    np.testing.assert_allclose(s, v[np.arange(3), last], rtol=1e-6)
    assert (v[mask == 0] == 0).all()
    # manual: final normed hidden state at that token times the score column
    hidden = np.asarray(model(input_ids=ids, attention_mask=mask, return_hidden=True))
    manual = np.einsum("bd,d->b", hidden[np.arange(3), last], np.asarray(model.score[...])[:, 0])
    np.testing.assert_allclose(s, manual, rtol=1e-5, atol=1e-6)
    # a row's score does not depend on its padding: row 1 alone, unpadded
    alone = np.asarray(models.sequence_scores(model, ids[1:2, :6], mask[1:2, :6]))
    np.testing.assert_allclose(alone, s[1:2], rtol=1e-5, atol=1e-6)
    # jit == eager, through the pure-params score function the engine uses
    graphdef, state = nnx.split(model)
    jitted = jax.jit(models.make_score_fn(graphdef))(nnx.to_pure_dict(state), ids, mask)
    np.testing.assert_allclose(np.asarray(jitted), s, rtol=1e-5, atol=1e-6)


def test_sharded_head_equals_unsharded():
    cfg = _cfg()
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = models.create_sharded(cfg, mesh, seed=2)
    plain = models.Transformer(cfg, rngs=nnx.Rngs(2))
    ids, mask = _batch()
    ids, mask = (
        np.concatenate([ids, ids[:1]]),
        np.concatenate([mask, mask[:1]]),
    )  # 4 rows over data x fsdp
    ids, mask = (jax.device_put(x, sharding.batch_sharding(mesh)) for x in (ids, mask))
    got = nnx.jit(models.sequence_scores)(sharded, ids, mask)
    np.testing.assert_allclose(
        np.asarray(got),
        np.asarray(nnx.jit(models.sequence_scores)(plain, ids, mask)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_round_trip_and_causal_lm_folder_as_classifier(tmp_path):
    model = models.Transformer(_cfg(), rngs=nnx.Rngs(4))
    models.save_pretrained(model, tmp_path / "rm", pad_token_id=PAD)
    cfg_json = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert cfg_json["architectures"] == ["LlamaForSequenceClassification"]
    assert cfg_json["num_labels"] == 1 and cfg_json["pad_token_id"] == PAD
    back = models.from_pretrained(tmp_path / "rm")
    assert back.config == model.config
    ids, mask = _batch()
    np.testing.assert_array_equal(
        np.asarray(models.sequence_scores(back, ids, mask)),
        np.asarray(models.sequence_scores(model, ids, mask)),
    )
    # a causal LM folder read as a one-label classifier: same backbone, fresh head, lm_head unused
    lm = models.Transformer(_cfg(num_labels=0, has_lm_head=True), rngs=nnx.Rngs(5))
    models.save_pretrained(lm, tmp_path / "lm")
    rm = models.from_pretrained(tmp_path / "lm", num_labels=1)
    assert rm.config.num_labels == 1 and not rm.config.has_lm_head
    np.testing.assert_array_equal(
        np.asarray(rm(ids, mask, return_hidden=True)), np.asarray(lm(ids, mask, return_hidden=True))
    )
    assert np.isfinite(np.asarray(rm.score[...])).all() and np.asarray(rm.score[...]).std() > 0
    # a model with both heads has no HF architecture: a clear error, not a silently partial export
    with pytest.raises(ValueError, match="both an LM head and a score head"):
        models.save_pretrained(
            models.Transformer(_cfg(has_lm_head=True), rngs=nnx.Rngs(0)), tmp_path / "x"
        )


# ----------------------------------------------------------------------------------- transformers parity
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

_COMMON = dict(
    vocab_size=V,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_labels=1,
    pad_token_id=PAD,
)


def _hf_config(family):
    if family == "llama":
        return transformers.LlamaConfig(**_COMMON)
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=V,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=32,
            num_labels=1,
            pad_token_id=PAD,
        )
    raise AssertionError(family)


def _hf_scores(model, ids, mask):
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)  # the positions our model uses by default
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(pos),
        )
    return out.logits.float().numpy()[:, 0]


# the backbones of every family are checked in test_models_hf_parity.py; the head differs only by the
# base-model prefix of the tensor names (model. for Llama-like families, transformer. for GPT-2)
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_scores_match_transformers_sequence_classification(family, tmp_path):
    torch.manual_seed(0)
    hf = transformers.AutoModelForSequenceClassification.from_config(
        _hf_config(family), attn_implementation="eager"
    )
    with torch.no_grad():  # every parameter random, the score head included
        for p in hf.parameters():
            p.add_(0.2 * torch.randn_like(p))
    hf.eval().save_pretrained(tmp_path / "hf")
    ours = models.from_pretrained(tmp_path / "hf")
    assert ours.config.num_labels == 1 and not ours.config.has_lm_head
    ids, mask = _batch()
    want = _hf_scores(hf, ids, mask)
    got = np.asarray(models.sequence_scores(ours, ids, mask))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    # and back: our export loads in transformers with the same scores
    models.save_pretrained(ours, tmp_path / "ours", pad_token_id=PAD)
    again = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "ours", attn_implementation="eager"
    ).eval()
    np.testing.assert_allclose(_hf_scores(again, ids, mask), want, rtol=1e-5, atol=1e-5)
