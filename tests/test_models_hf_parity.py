"""Parity with Hugging Face transformers (torch CPU) on tiny random models of every family.

If a parity test fails after a transformers upgrade, diff the family's modeling file against the
numerics in alignment/models/layers.py before loosening any tolerance.
"""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from alignment.models import from_pretrained, save_pretrained  # noqa: E402

V = 128
_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8,
}
_COMMON = dict(
    vocab_size=V,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def _hf_config(family):
    if family == "llama":
        return transformers.LlamaConfig(**_COMMON, attention_bias=True)
    if family == "llama3":
        return transformers.LlamaConfig(
            **_COMMON, rope_parameters=dict(_LLAMA3_ROPE), tie_word_embeddings=True
        )
    if family == "mistral":
        return transformers.MistralConfig(**_COMMON, sliding_window=4)
    if family == "qwen2":
        return transformers.Qwen2Config(**_COMMON)
    if family == "qwen3":
        return transformers.Qwen3Config(**_COMMON, head_dim=16)
    if family == "gemma":
        return transformers.GemmaConfig(**_COMMON, head_dim=8)
    if family == "gemma2":
        return transformers.Gemma2Config(
            **_COMMON,
            head_dim=8,
            sliding_window=4,
            query_pre_attn_scalar=12,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
        )
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=V,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
        )
    raise AssertionError(family)


FAMILIES = ["llama", "llama3", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gpt2"]


def _hf_model(family, folder):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(
        _hf_config(family), attn_implementation="eager"
    )
    with (
        torch.no_grad()
    ):  # every parameter random (norm weights and biases included), not the zero/one init
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.eval().save_pretrained(folder)
    return model


def _batch():
    rng = np.random.RandomState(0)
    ids = rng.randint(0, V, (3, 12))
    mask = np.ones((3, 12), np.int64)
    mask[0, :4] = 0  # left padding
    mask[1, 9:] = 0  # right padding
    return ids, mask


def _hf_logits(model, ids, mask):
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)  # the positions our model uses by default
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(pos),
        )
    return out.logits.float().numpy()


def _max_diff(a, b, mask):
    return float(np.abs((np.asarray(a) - np.asarray(b)) * mask[..., None]).max())


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers_and_round_trip(family, tmp_path):
    hf = _hf_model(family, tmp_path / "hf")
    ids, mask = _batch()
    ref = _hf_logits(hf, ids, mask)
    ours = from_pretrained(tmp_path / "hf")
    assert ours.config.family == ("llama" if family == "llama3" else family)
    logits = ours(jnp.asarray(ids), jnp.asarray(mask))
    assert _max_diff(logits, ref, mask) <= 1e-4

    save_pretrained(ours, tmp_path / "ours")
    back, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "ours", attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert type(back).__name__ == type(hf).__name__
    assert _max_diff(_hf_logits(back.eval(), ids, mask), ref, mask) <= 1e-4


def test_scanned_and_sharded_checkpoints_load_identically(tmp_path):
    hf = _hf_model("gemma2", tmp_path / "hf")
    ids, mask = _batch()
    ref = _hf_logits(hf, ids, mask)
    scanned = from_pretrained(tmp_path / "hf", scan_layers=True)
    assert _max_diff(scanned(jnp.asarray(ids), jnp.asarray(mask)), ref, mask) <= 1e-4
    # A checkpoint split over several files with an index, written from the scanned layout.
    save_pretrained(scanned, tmp_path / "split", max_shard_bytes=20_000)
    assert (tmp_path / "split" / "model.safetensors.index.json").exists()
    assert len([f for f in os.listdir(tmp_path / "split") if f.endswith(".safetensors")]) > 1
    reloaded = from_pretrained(tmp_path / "split")
    assert _max_diff(reloaded(jnp.asarray(ids), jnp.asarray(mask)), ref, mask) <= 1e-4
    back = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "split", attn_implementation="eager"
    )
    assert _max_diff(_hf_logits(back.eval(), ids, mask), ref, mask) <= 1e-4


def test_old_config_layout_rope_theta_and_rope_scaling(tmp_path):
    hf = _hf_model("llama3", tmp_path / "hf")
    ids, mask = _batch()
    ref = _hf_logits(hf, ids, mask)
    cfg_path = tmp_path / "hf" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = dict(rope, type=rope.pop("rope_type"))  # the pre-transformers-5 spelling
    cfg_path.write_text(json.dumps(cfg))
    model = from_pretrained(tmp_path / "hf")
    assert model.config.rope_type == "llama3" and model.config.rope_theta == 500000.0
    assert _max_diff(model(jnp.asarray(ids), jnp.asarray(mask)), ref, mask) <= 1e-4


def _edit_config(folder, **changes):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_unsupported_configs_and_bad_checkpoints_are_clear_errors(tmp_path):
    folder = tmp_path / "hf"
    _hf_model("llama", folder)
    good = json.loads((folder / "config.json").read_text())

    _edit_config(folder, model_type="falcon")
    with pytest.raises(ValueError, match="model_type='falcon' is not supported"):
        from_pretrained(folder)
    _edit_config(
        folder,
        model_type="llama",
        rope_parameters={"rope_type": "yarn", "factor": 2.0, "rope_theta": 10000.0},
    )
    with pytest.raises(ValueError, match=r"rope_parameters.rope_type='yarn' is not supported"):
        from_pretrained(folder)
    _edit_config(folder, rope_parameters=good["rope_parameters"], hidden_act="mish")
    with pytest.raises(ValueError, match="hidden_act='mish' is not supported"):
        from_pretrained(folder)
    _edit_config(folder, hidden_act="silu")

    tensors = load_file(str(folder / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    bad = dict(tensors, **{name: tensors[name][:, :-1].copy()})
    save_file(bad, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"tensor '{name}' has shape \(64, 31\).*\(64, 32\)"):
        from_pretrained(folder)
    missing = {k: v for k, v in tensors.items() if k != name}
    save_file(missing, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"tensor '{name}' is missing"):
        from_pretrained(folder)
    extra = dict(tensors, **{"model.layers.0.mlp.extra.weight": np.zeros(3, np.float32)})
    save_file(extra, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="model.layers.0.mlp.extra.weight"):
        from_pretrained(folder)
