"""Hugging Face interop: config.json + safetensors <-> `ModelConfig` + our parameters.

One name map per family (`_layout`). Loading reads each tensor lazily (`safe_open`), converts
it on the host and places it straight onto its final sharding, one tensor at a time; with
`scan_layers` each device shard of a stacked parameter reads only the layers it holds.
Unsupported architectures or options are errors naming the field, never a silently different
model.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from alignment.models.config import ModelConfig
from alignment.models.transformer import Transformer
from alignment.sharding import state_shardings

_LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}
# Models with a score head and no LM head (reward models); `score.weight` is [num_labels, D].
_CLASSIFIERS = {
    "llama": "LlamaForSequenceClassification",
    "mistral": "MistralForSequenceClassification",
    "qwen2": "Qwen2ForSequenceClassification",
    "qwen3": "Qwen3ForSequenceClassification",
    "gemma": "GemmaForSequenceClassification",
    "gemma2": "Gemma2ForSequenceClassification",
    "gpt2": "GPT2ForSequenceClassification",
}
_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
}
_HF_ACTIVATION = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "relu": "relu"}
# Buffers some checkpoints carry that are not parameters.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "attn.bias", "attn.masked_bias")
# Fields that describe how the model runs, not what it computes.
_EXECUTION_FIELDS = (
    "dtype",
    "param_dtype",
    "scan_layers",
    "remat_policy",
    "attention_impl",
    "init_std",
)


# ------------------------------------------------------------------------------------------ config
def _need(d: dict, key: str, where: str):
    if key not in d or d[key] is None:
        raise ValueError(f"{where}: required field {key!r} is missing")
    return d[key]


def _opt(d: dict, key: str, default):
    """An optional config.json field; absent or null means the Hugging Face class default."""
    value = d[key] if key in d else None
    return default if value is None else value


def _rope_fields(d: dict, where: str) -> dict:
    """Rope settings from either layout: `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling`."""
    if d.get("rope_parameters") is not None:
        rp, field = d["rope_parameters"], "rope_parameters"
    elif d.get("rope_scaling") is not None:
        rp, field = d["rope_scaling"], "rope_scaling"
    else:
        rp, field = {}, "rope_parameters"
    if not isinstance(rp, dict):
        raise ValueError(f"{where}: {field} must be a dict, got {rp!r}")
    if any(isinstance(v, dict) for v in rp.values()):
        raise ValueError(
            f"{where}: {field} is nested per layer type ({sorted(rp)}); per-layer rope is not "
            "supported"
        )
    rope_type = _opt(rp, "rope_type", _opt(rp, "type", "default"))
    theta = float(_opt(rp, "rope_theta", _opt(d, "rope_theta", 10_000.0)))
    prf = _opt(rp, "partial_rotary_factor", _opt(d, "partial_rotary_factor", 1.0))
    if float(prf) != 1.0:
        raise ValueError(f"{where}: partial_rotary_factor={prf} is not supported (only 1.0)")
    out = dict(rope_theta=theta, rope_type=rope_type)
    if rope_type == "default":
        return out
    if rope_type == "linear":
        return dict(out, rope_factor=float(_need(rp, "factor", f"{where} {field}")))
    if rope_type == "llama3":
        sub = f"{where} {field}"
        return dict(
            out,
            rope_factor=float(_need(rp, "factor", sub)),
            rope_low_freq_factor=float(_need(rp, "low_freq_factor", sub)),
            rope_high_freq_factor=float(_need(rp, "high_freq_factor", sub)),
            rope_original_max_len=int(
                _opt(
                    rp,
                    "original_max_position_embeddings",
                    _need(d, "max_position_embeddings", where),
                )
            ),
        )
    raise ValueError(
        f"{where}: {field}.rope_type={rope_type!r} is not supported "
        "(supported: default, linear, llama3)"
    )


def _activation(d: dict, key: str, default: str, where: str, family: str) -> str:
    name = _opt(d, key, default)
    if family == "gemma" and name == "gelu":
        name = "gelu_pytorch_tanh"  # as transformers does: legacy Gemma configs mean the tanh form
    if name not in _ACTIVATIONS:
        raise ValueError(
            f"{where}: {key}={name!r} is not supported (supported: {sorted(_ACTIVATIONS)})"
        )
    return _ACTIVATIONS[name]


def _head_fields(d: dict, where: str) -> dict:
    """num_labels / has_lm_head: a *ForSequenceClassification architecture is a classifier."""
    archs = d.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in archs):
        return {}
    if d.get("num_labels") is not None:
        n = int(d["num_labels"])
    elif d.get("id2label"):
        n = len(d["id2label"])
    else:
        n = 2  # transformers' PretrainedConfig default
    if n <= 0:
        raise ValueError(f"{where}: num_labels={n} must be positive for {archs}")
    return dict(num_labels=n, has_lm_head=False)


def config_from_hf(d: dict, *, dtype=None, where: str = "config.json") -> ModelConfig:
    """`ModelConfig` from a Hugging Face config dict; unsupported fields raise naming the field."""
    family = d.get("model_type")
    if family not in _ARCHITECTURES:
        raise ValueError(
            f"{where}: model_type={family!r} is not supported (supported: {sorted(_ARCHITECTURES)})"
        )
    if d.get("use_bidirectional_attention"):
        raise ValueError(
            f"{where}: use_bidirectional_attention=True is not supported (causal LMs only)"
        )
    dtype = "float32" if dtype is None else jnp.dtype(dtype).name
    common = dict(family=family, dtype=dtype, param_dtype=dtype, **_head_fields(d, where))
    if family == "gpt2":
        if d.get("scale_attn_by_inverse_layer_idx"):
            raise ValueError(f"{where}: scale_attn_by_inverse_layer_idx=True is not supported")
        dm = int(_opt(d, "n_embd", _opt(d, "hidden_size", 768)))
        nh = int(_opt(d, "n_head", _opt(d, "num_attention_heads", 12)))
        if dm % nh:
            raise ValueError(f"{where}: n_embd={dm} is not divisible by n_head={nh}")
        return ModelConfig(
            **common,
            vocab_size=int(_need(d, "vocab_size", where)),
            d_model=dm,
            n_layers=int(_opt(d, "n_layer", _opt(d, "num_hidden_layers", 12))),
            n_heads=nh,
            n_kv_heads=nh,
            head_dim=dm // nh,
            d_ff=int(_opt(d, "n_inner", 4 * dm)),
            max_seq_len=int(_opt(d, "n_positions", _opt(d, "max_position_embeddings", 1024))),
            norm_type="layer",
            norm_eps=float(_opt(d, "layer_norm_epsilon", 1e-5)),
            activation=_activation(d, "activation_function", "gelu_new", where, family),
            gated_mlp=False,
            qkv_bias=True,
            out_bias=True,
            mlp_bias=True,
            position_embedding="learned",
            query_pre_attn_scalar=None if _opt(d, "scale_attn_weights", True) else 1.0,
            tie_embeddings=bool(_opt(d, "tie_word_embeddings", True)),
        )

    dm = int(_need(d, "hidden_size", where))
    nh = int(_need(d, "num_attention_heads", where))
    n_layers = int(_need(d, "num_hidden_layers", where))
    gemma = family in ("gemma", "gemma2")
    default_head_dim = {"qwen3": 128, "gemma": 256, "gemma2": 256}.get(family, dm // nh)
    kw: dict[str, Any] = dict(
        vocab_size=int(_need(d, "vocab_size", where)),
        d_model=dm,
        n_layers=n_layers,
        n_heads=nh,
        n_kv_heads=int(_opt(d, "num_key_value_heads", nh)),
        head_dim=int(_opt(d, "head_dim", default_head_dim)),
        d_ff=int(_need(d, "intermediate_size", where)),
        max_seq_len=int(_opt(d, "max_position_embeddings", 2048)),
        norm_eps=float(_opt(d, "rms_norm_eps", 1e-6)),
        tie_embeddings=bool(_opt(d, "tie_word_embeddings", gemma)),
        **_rope_fields(d, where),
    )
    if family == "gemma2":
        kw["activation"] = _activation(d, "hidden_activation", "gelu_pytorch_tanh", where, family)
    else:
        kw["activation"] = _activation(
            d, "hidden_act", "gelu_pytorch_tanh" if gemma else "silu", where, family
        )
    if family in ("llama", "qwen3", "gemma", "gemma2"):
        kw["qkv_bias"] = kw["out_bias"] = bool(_opt(d, "attention_bias", False))
    if family == "qwen2":
        kw["qkv_bias"] = True
    if family == "llama":
        kw["mlp_bias"] = bool(_opt(d, "mlp_bias", False))
    if family == "qwen3":
        kw["qk_norm"] = True
    if gemma:
        kw.update(norm_offset=True, embed_scale=True)

    # Sliding windows, resolved per layer as the Hugging Face classes do.
    layer_types = d.get("layer_types")
    window = None
    if family == "mistral":
        window = _opt(d, "sliding_window", 4096) if "sliding_window" in d else 4096
    elif family in ("qwen2", "qwen3"):
        if _opt(d, "use_sliding_window", False):
            window = _opt(d, "sliding_window", 4096)
            if layer_types is None:
                mwl = int(_opt(d, "max_window_layers", 28))
                layer_types = [
                    "sliding_attention" if i >= mwl else "full_attention" for i in range(n_layers)
                ]
        elif layer_types is not None and "sliding_attention" in layer_types:
            raise ValueError(
                f"{where}: layer_types has sliding_attention but use_sliding_window is false"
            )
    elif family == "gemma2":
        window = _opt(d, "sliding_window", 4096) if "sliding_window" in d else 4096
        if layer_types is None:
            layer_types = [
                "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)
            ]
        kw.update(
            post_norms=True,
            query_pre_attn_scalar=float(_opt(d, "query_pre_attn_scalar", 256)),
            attn_softcap=d["attn_logit_softcapping"] if "attn_logit_softcapping" in d else 50.0,
            final_logit_softcap=d["final_logit_softcapping"]
            if "final_logit_softcapping" in d
            else 30.0,
        )
    elif layer_types is not None and "sliding_attention" in layer_types:
        raise ValueError(
            f"{where}: layer_types with sliding_attention is not supported for model_type {family}"
        )
    if layer_types is not None:
        bad = [t for t in layer_types if t not in ("full_attention", "sliding_attention")]
        if bad:
            raise ValueError(
                f"{where}: layer_types entry {bad[0]!r} is not supported "
                "(supported: full_attention, sliding_attention)"
            )
        if len(layer_types) != n_layers:
            raise ValueError(
                f"{where}: layer_types has {len(layer_types)} entries, num_hidden_layers={n_layers}"
            )
        if window is None or "sliding_attention" not in layer_types:
            layer_types = None
    kw["sliding_window"] = None if window is None else int(window)
    kw["layer_types"] = None if layer_types is None else tuple(layer_types)
    if family == "gemma2":
        kw["attn_softcap"] = None if kw["attn_softcap"] is None else float(kw["attn_softcap"])
        kw["final_logit_softcap"] = (
            None if kw["final_logit_softcap"] is None else float(kw["final_logit_softcap"])
        )
    return ModelConfig(**common, **kw)


def config_to_hf(cfg: ModelConfig) -> dict:
    """The Hugging Face config dict for `cfg`; raises if the family cannot express `cfg` exactly."""
    f = cfg.family
    if cfg.num_labels and cfg.has_lm_head:
        raise ValueError(
            "a model with both an LM head and a score head (num_labels > 0, has_lm_head=True) has "
            "no Hugging Face architecture; export the policy and the value/reward model separately"
        )
    arch = _CLASSIFIERS[f] if cfg.num_labels else _ARCHITECTURES[f]
    d: dict[str, Any] = {
        "model_type": f,
        "architectures": [arch],
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings,
        "dtype": cfg.param_dtype,
        "torch_dtype": cfg.param_dtype,
    }
    if cfg.num_labels:
        d.update(
            num_labels=cfg.num_labels,
            id2label={str(i): f"LABEL_{i}" for i in range(cfg.num_labels)},
            label2id={f"LABEL_{i}": i for i in range(cfg.num_labels)},
        )
    if f == "gpt2":
        d.update(
            n_embd=cfg.d_model,
            n_layer=cfg.n_layers,
            n_head=cfg.n_heads,
            n_inner=cfg.d_ff,
            n_positions=cfg.max_seq_len,
            layer_norm_epsilon=cfg.norm_eps,
            activation_function="gelu_new" if cfg.activation == "gelu_tanh" else cfg.activation,
            scale_attn_weights=cfg.query_pre_attn_scalar is None,
        )
    else:
        rope = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
        if cfg.rope_type == "linear":
            rope["factor"] = cfg.rope_factor
        elif cfg.rope_type == "llama3":
            rope.update(
                factor=cfg.rope_factor,
                low_freq_factor=cfg.rope_low_freq_factor,
                high_freq_factor=cfg.rope_high_freq_factor,
                original_max_position_embeddings=cfg.rope_original_max_len,
            )
        d.update(
            hidden_size=cfg.d_model,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_kv_heads,
            head_dim=cfg.head_dim,
            intermediate_size=cfg.d_ff,
            max_position_embeddings=cfg.max_seq_len,
            rms_norm_eps=cfg.norm_eps,
            rope_parameters=rope,
            rope_theta=cfg.rope_theta,
        )
        act = _HF_ACTIVATION[cfg.activation]
        d["hidden_activation" if f == "gemma2" else "hidden_act"] = act
        if f in ("llama", "qwen3", "gemma", "gemma2"):
            d["attention_bias"] = cfg.qkv_bias
        if f == "llama":
            d["mlp_bias"] = cfg.mlp_bias
        types = list(cfg.layer_types) if cfg.layer_types else None
        if f == "mistral":
            d["sliding_window"] = cfg.sliding_window
        elif f in ("qwen2", "qwen3"):
            d["use_sliding_window"] = cfg.sliding_window is not None
            d["sliding_window"] = cfg.sliding_window
            d["layer_types"] = (
                types
                or ["sliding_attention" if cfg.sliding_window else "full_attention"] * cfg.n_layers
            )
            d["max_window_layers"] = cfg.n_layers
        elif f == "gemma2":
            qpas = cfg.query_pre_attn_scalar or cfg.head_dim
            d.update(
                query_pre_attn_scalar=int(qpas) if float(qpas).is_integer() else qpas,
                attn_logit_softcapping=cfg.attn_softcap,
                final_logit_softcapping=cfg.final_logit_softcap,
                sliding_window=cfg.sliding_window or 4096,
                layer_types=types
                or ["sliding_attention" if cfg.sliding_window else "full_attention"] * cfg.n_layers,
            )
    # The export must describe exactly this model: parse it back and compare.
    back = config_from_hf(d, dtype=cfg.param_dtype)
    exec_fields = {k: getattr(cfg, k) for k in _EXECUTION_FIELDS}
    back = dataclasses.replace(back, **exec_fields)
    if back != cfg:
        diff = [
            fl.name
            for fl in dataclasses.fields(cfg)
            if getattr(back, fl.name) != getattr(cfg, fl.name)
        ]
        raise ValueError(
            f"ModelConfig fields {diff} cannot be expressed by Hugging Face model_type {f!r}"
        )
    return d


# ------------------------------------------------------------------------------------------ layout
@dataclasses.dataclass(frozen=True)
class _Entry:
    """One of our parameters and the Hugging Face tensor it comes from.

    `to_ours` maps the HF tensor (or, for fused tensors, its `part` of `nparts` along the last
    axis) to our layout; `to_hf` is its inverse.
    """

    ours: tuple[str, ...]
    hf: str
    to_ours: Callable
    to_hf: Callable
    part: int = 0
    nparts: int = 1


def _layout(cfg: ModelConfig) -> tuple[list[_Entry], list[_Entry]]:
    """(global entries, per-layer entries with '{i}' in the HF name)."""
    d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    ident = (lambda x: x, lambda x: x)
    T = (lambda x: x.T, lambda x: x.T)

    def heads_in(nh):  # torch Linear [nh*h, d] <-> ours [d, nh, h]
        return (lambda x: x.T.reshape(d, nh, h), lambda x: x.reshape(d, nh * h).T)

    def heads_bias(nh):
        return (lambda x: x.reshape(nh, h), lambda x: x.reshape(nh * h))

    if cfg.family == "gpt2":
        p = "transformer."
        glob = [
            _Entry(("embed",), p + "wte.weight", *ident),
            _Entry(("pos_embed",), p + "wpe.weight", *ident),
            _Entry(("final_norm", "scale"), p + "ln_f.weight", *ident),
            _Entry(("final_norm", "bias"), p + "ln_f.bias", *ident),
        ]
        if not cfg.tie_embeddings and cfg.has_lm_head:
            glob.append(_Entry(("lm_head",), "lm_head.weight", *T))
        if cfg.num_labels:
            glob.append(_Entry(("score",), "score.weight", *T))
        lp = p + "h.{i}."
        conv_heads = (
            lambda x: x.reshape(d, n, h),
            lambda x: x.reshape(d, n * h),
        )  # Conv1D is [in, out]
        layer = [
            _Entry(("attn_norm", "scale"), lp + "ln_1.weight", *ident),
            _Entry(("attn_norm", "bias"), lp + "ln_1.bias", *ident),
            _Entry(("mlp_norm", "scale"), lp + "ln_2.weight", *ident),
            _Entry(("mlp_norm", "bias"), lp + "ln_2.bias", *ident),
            _Entry(
                ("attn", "o"),
                lp + "attn.c_proj.weight",
                lambda x: x.reshape(n, h, d),
                lambda x: x.reshape(n * h, d),
            ),
            _Entry(("attn", "o_bias"), lp + "attn.c_proj.bias", *ident),
            _Entry(("mlp", "up"), lp + "mlp.c_fc.weight", *ident),
            _Entry(("mlp", "up_bias"), lp + "mlp.c_fc.bias", *ident),
            _Entry(("mlp", "down"), lp + "mlp.c_proj.weight", *ident),
            _Entry(("mlp", "down_bias"), lp + "mlp.c_proj.bias", *ident),
        ]
        for j, name in enumerate("qkv"):
            layer.append(
                _Entry(("attn", name), lp + "attn.c_attn.weight", *conv_heads, part=j, nparts=3)
            )
            layer.append(
                _Entry(
                    ("attn", name + "_bias"),
                    lp + "attn.c_attn.bias",
                    *heads_bias(n),
                    part=j,
                    nparts=3,
                )
            )
        return glob, layer

    glob = [
        _Entry(("embed",), "model.embed_tokens.weight", *ident),
        _Entry(("final_norm", "scale"), "model.norm.weight", *ident),
    ]
    if not cfg.tie_embeddings and cfg.has_lm_head:
        glob.append(_Entry(("lm_head",), "lm_head.weight", *T))
    if cfg.num_labels:
        glob.append(_Entry(("score",), "score.weight", *T))
    lp = "model.layers.{i}."
    layer = [
        _Entry(("attn", "q"), lp + "self_attn.q_proj.weight", *heads_in(n)),
        _Entry(("attn", "k"), lp + "self_attn.k_proj.weight", *heads_in(k)),
        _Entry(("attn", "v"), lp + "self_attn.v_proj.weight", *heads_in(k)),
        _Entry(
            ("attn", "o"),
            lp + "self_attn.o_proj.weight",
            lambda x: x.T.reshape(n, h, d),
            lambda x: x.reshape(n * h, d).T,
        ),
        _Entry(("mlp", "up"), lp + "mlp.up_proj.weight", *T),
        _Entry(("mlp", "down"), lp + "mlp.down_proj.weight", *T),
        _Entry(("attn_norm", "scale"), lp + "input_layernorm.weight", *ident),
    ]
    if cfg.gated_mlp:
        layer.append(_Entry(("mlp", "gate"), lp + "mlp.gate_proj.weight", *T))
    if cfg.qkv_bias:
        layer += [
            _Entry(("attn", "q_bias"), lp + "self_attn.q_proj.bias", *heads_bias(n)),
            _Entry(("attn", "k_bias"), lp + "self_attn.k_proj.bias", *heads_bias(k)),
            _Entry(("attn", "v_bias"), lp + "self_attn.v_proj.bias", *heads_bias(k)),
        ]
    if cfg.out_bias:
        layer.append(_Entry(("attn", "o_bias"), lp + "self_attn.o_proj.bias", *ident))
    if cfg.mlp_bias:
        layer += [
            _Entry(("mlp", "up_bias"), lp + "mlp.up_proj.bias", *ident),
            _Entry(("mlp", "down_bias"), lp + "mlp.down_proj.bias", *ident),
        ]
        if cfg.gated_mlp:
            layer.append(_Entry(("mlp", "gate_bias"), lp + "mlp.gate_proj.bias", *ident))
    if cfg.qk_norm:
        layer += [
            _Entry(("attn", "q_norm", "scale"), lp + "self_attn.q_norm.weight", *ident),
            _Entry(("attn", "k_norm", "scale"), lp + "self_attn.k_norm.weight", *ident),
        ]
    if cfg.post_norms:
        layer += [
            _Entry(("attn_post_norm", "scale"), lp + "post_attention_layernorm.weight", *ident),
            _Entry(("mlp_norm", "scale"), lp + "pre_feedforward_layernorm.weight", *ident),
            _Entry(("mlp_post_norm", "scale"), lp + "post_feedforward_layernorm.weight", *ident),
        ]
    else:
        layer.append(_Entry(("mlp_norm", "scale"), lp + "post_attention_layernorm.weight", *ident))
    return glob, layer


def _split_path(path: tuple, cfg: ModelConfig) -> tuple[int | None, tuple[str, ...]]:
    """(layer index or None, entry key) of a flat-state path."""
    path = tuple(p if isinstance(p, int) else str(p) for p in path)
    if path[0] != "layers":
        return None, path
    if cfg.scan_layers:
        return -1, path[1:]
    return int(path[1]), path[2:]


# ------------------------------------------------------------------------------------------ reading
class _Checkpoint:
    """Lazy access to the tensors of model.safetensors or a sharded model.safetensors.index.json."""

    def __init__(self, folder: pathlib.Path):
        index = folder / "model.safetensors.index.json"
        single = folder / "model.safetensors"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif single.exists():
            weight_map = None
        else:
            raise FileNotFoundError(
                f"{folder}: neither model.safetensors nor model.safetensors.index.json found"
            )
        self._files: dict[str, Any] = {}
        self.location: dict[str, str] = {}
        names = sorted(set(weight_map.values())) if weight_map else ["model.safetensors"]
        for fname in names:
            if not (folder / fname).exists():
                raise FileNotFoundError(
                    f"{folder / fname} (listed in model.safetensors.index.json) is missing"
                )
            handle = safe_open(str(folder / fname), framework="numpy")
            self._files[fname] = handle
            for key in handle.keys():
                self.location[key] = fname
        self.folder = folder
        # Some checkpoints (e.g. the original GPT-2) store keys without the base-model prefix.
        self._alias = {}
        for key in self.location:
            for prefix in ("model.", "transformer."):
                self._alias.setdefault(prefix + key, key)

    def resolve(self, name: str) -> str | None:
        if name in self.location:
            return name
        return self._alias.get(name)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._files[self.location[key]].get_slice(key).get_shape())

    def get(self, key: str) -> np.ndarray:
        return self._files[self.location[key]].get_tensor(key)


def _expected_hf_shape(entry: _Entry, our_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = jax.eval_shape(entry.to_hf, jax.ShapeDtypeStruct(our_shape, jnp.float32)).shape
    return shape[:-1] + (shape[-1] * entry.nparts,)


def from_pretrained(path, *, dtype=None, mesh=None, num_labels=None, **execution) -> Transformer:
    """Loads a Hugging Face folder; with `mesh`, every tensor goes straight onto its sharding.

    dtype: compute and parameter dtype (default float32). `execution` may set how the model runs
    (scan_layers, remat_policy, attention_impl), never what it computes. `num_labels` > 0 loads
    the folder as a sequence classifier (no LM head): a folder without `score.weight` (a causal
    LM, to start a reward model from) gets a fresh head ~ N(0, init_std^2), seeded by 0.
    """
    folder = pathlib.Path(path)
    cfg_file = folder / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file} not found")
    cfg = config_from_hf(json.loads(cfg_file.read_text()), dtype=dtype, where=str(cfg_file))
    bad = set(execution) - {"scan_layers", "remat_policy", "attention_impl"}
    if bad:
        raise TypeError(f"from_pretrained got unexpected keyword arguments {sorted(bad)}")
    cfg = cfg.replace(**execution)
    if num_labels is not None:
        cfg = cfg.replace(num_labels=int(num_labels), has_lm_head=False)
    ckpt = _Checkpoint(folder)
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh) if mesh is not None else None
    flat_shardings = dict(nnx.to_flat_state(shardings)) if shardings is not None else None
    glob, layer = _layout(cfg)
    entries = {e.ours: e for e in glob + layer}
    np_dtype = np.dtype(jnp.dtype(cfg.param_dtype))
    used: set[str] = set()

    def read(entry: _Entry, i: int | None, our_shape) -> np.ndarray:
        name = entry.hf.format(i=i)
        key = ckpt.resolve(name)
        if key is None and entry.ours == ("score",) and num_labels is not None:
            init = cfg.init_std * jax.random.normal(jax.random.PRNGKey(0), our_shape, jnp.float32)
            return np.asarray(init).astype(np_dtype)
        if key is None:
            raise ValueError(f"{folder}: tensor {name!r} is missing from the checkpoint")
        used.add(key)
        want = _expected_hf_shape(entry, our_shape)
        if ckpt.shape(key) != want:
            raise ValueError(
                f"{folder}: tensor {name!r} has shape {ckpt.shape(key)} but config.json implies {want}"
            )
        x = ckpt.get(key)
        if entry.nparts > 1:
            w = x.shape[-1] // entry.nparts
            x = x[..., entry.part * w : (entry.part + 1) * w]
        return np.ascontiguousarray(entry.to_ours(x)).astype(np_dtype)

    def load(path, var):
        i, key = _split_path(path, cfg)
        if key not in entries:
            raise ValueError(
                f"internal: parameter {'/'.join(map(str, path))} has no Hugging Face name "
                f"for model_type {cfg.family}"
            )
        entry = entries[key]
        shape = tuple(var.get_value().shape)
        if i == -1:  # stacked over layers: a shard reads just the layers it holds

            def host(index):
                layers = range(cfg.n_layers)[index[0]]
                return np.stack([read(entry, j, shape[1:])[index[1:]] for j in layers])

            full = None
        else:
            full = read(entry, i, shape)

            def host(index):
                return full[index]

        if mesh is None:
            value = jax.device_put(full if full is not None else host((slice(None),) * len(shape)))
        else:
            value = jax.make_array_from_callback(shape, flat_shardings[path], host)
        return var.replace(value=value)

    state = nnx.map_state(load, abstract_state)
    ignored = (
        {ckpt.resolve("lm_head.weight")} if cfg.tie_embeddings or not cfg.has_lm_head else set()
    )
    unused = sorted(
        k
        for k in ckpt.location
        if k not in used and k not in ignored and not k.endswith(_IGNORED_SUFFIXES)
    )
    if unused:
        raise ValueError(
            f"{folder}: checkpoint tensors {unused[:5]} are not used by a {cfg.family} model with this "
            "config (unsupported option?)"
        )
    return nnx.merge(graphdef, state)


# ------------------------------------------------------------------------------------------ writing
def save_pretrained(
    model: Transformer, path, *, max_shard_bytes: int = 4 * 2**30, pad_token_id: int | None = None
) -> None:
    """Writes config.json + model.safetensors (sharded with an index past `max_shard_bytes`).

    pad_token_id goes into config.json: transformers' *ForSequenceClassification needs it to
    find the last non-pad token of a padded batch."""
    cfg = model.config
    hf_config = config_to_hf(cfg)
    if pad_token_id is not None:
        hf_config["pad_token_id"] = int(pad_token_id)
    folder = pathlib.Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    glob, layer = _layout(cfg)
    entries = {e.ours: e for e in glob + layer}
    state = nnx.state(model, nnx.Param)

    def tensors():
        """(hf name, array) in a stable order; fused tensors are concatenated from their parts."""
        parts: dict[str, dict[int, np.ndarray]] = {}
        for path, var in nnx.to_flat_state(state):
            i, key = _split_path(path, cfg)
            entry = entries[key]
            value = np.asarray(var[...])
            per_layer = [(i, value)] if i != -1 else list(enumerate(value))
            for j, v in per_layer:
                name = entry.hf.format(i=j)
                out = np.ascontiguousarray(entry.to_hf(v))
                if entry.nparts == 1:
                    yield name, out
                else:
                    parts.setdefault(name, {})[entry.part] = out
                    if len(parts[name]) == entry.nparts:
                        yield (
                            name,
                            np.concatenate([parts[name][p] for p in range(entry.nparts)], axis=-1),
                        )
                        del parts[name]

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, arr in tensors():
        if size and size + arr.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += arr.nbytes
    meta = {"format": "pt"}
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2))
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata=meta)
        return
    weight_map = {}
    for s, shard in enumerate(shards):
        fname = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata=meta)
        weight_map.update({k: fname for k in shard})
    total = sum(a.nbytes for shard in shards for a in shard.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
