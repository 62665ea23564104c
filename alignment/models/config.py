"""`ModelConfig`: one frozen description of a decoder-only LM, and named presets.

One dataclass covers Llama (incl. Llama-3 rope scaling), Mistral, Qwen2, Qwen3, Gemma, Gemma2
and GPT-2 through family switches; the transformer is configured, never forked. The config is
hashable so it can be a `jax.jit` static argument.
"""

from __future__ import annotations

import dataclasses
from typing import Any

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gpt2")
NORM_TYPES = ("rms", "layer")
ACTIVATIONS = ("silu", "gelu_tanh", "gelu", "relu")
ROPE_TYPES = ("default", "linear", "llama3")
REMAT_POLICIES = (
    "none",
    "full",
    "nothing_saveable",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
)
ATTENTION_IMPLS = ("auto", "einsum", "fused")
LAYER_TYPES = ("full_attention", "sliding_attention")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes, family switches and execution flags of a `Transformer`.

    `family` only selects the Hugging Face naming used by `save_pretrained`; the numerics are set
    by the switches below.
    """

    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 16
    d_ff: int = 128
    max_seq_len: int = 512
    family: str = "llama"
    # norms
    norm_type: str = "rms"  # "rms" | "layer" (LayerNorm with bias, GPT-2)
    norm_eps: float = 1e-6
    norm_offset: bool = False  # Gemma: scale by (1 + w), computed in float32
    post_norms: bool = False  # Gemma2: extra norms after attention and after the MLP
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before rope
    # mlp
    activation: str = "silu"
    gated_mlp: bool = True  # SwiGLU / GeGLU: down(act(gate x) * up x)
    mlp_bias: bool = False
    # attention
    qkv_bias: bool = False
    out_bias: bool = False
    query_pre_attn_scalar: float | None = None  # scores scale = this**-0.5 (None: head_dim)
    attn_softcap: float | None = None  # Gemma2: cap * tanh(scores / cap)
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None  # per layer; None: all sliding iff sliding_window
    # positions
    position_embedding: str = "rope"  # "rope" | "learned" (GPT-2)
    rope_theta: float = 10_000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    # embeddings / head
    embed_scale: bool = False  # Gemma: multiply token embeddings by sqrt(d_model)
    tie_embeddings: bool = False
    final_logit_softcap: float | None = None
    # scalar heads: a `score` projection [D, num_labels] (reward model, value head); 0 = none.
    # has_lm_head=False drops the LM head (a *ForSequenceClassification model); a tied embedding
    # still gives logits then
    num_labels: int = 0
    has_lm_head: bool = True
    # execution
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention_impl: str = "auto"  # "auto": einsum on CPU, jax.nn.dot_product_attention elsewhere
    init_std: float = 0.02

    def __post_init__(self):
        def bad(field, value, allowed):
            raise ValueError(
                f"ModelConfig.{field}={value!r} is not supported; expected one of {allowed}"
            )

        for field, allowed in (
            ("family", FAMILIES),
            ("norm_type", NORM_TYPES),
            ("activation", ACTIVATIONS),
            ("rope_type", ROPE_TYPES),
            ("remat_policy", REMAT_POLICIES),
            ("attention_impl", ATTENTION_IMPLS),
            ("dtype", DTYPES),
            ("param_dtype", DTYPES),
            ("position_embedding", ("rope", "learned")),
        ):
            if getattr(self, field) not in allowed:
                bad(field, getattr(self, field), allowed)
        for field in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "d_ff",
            "max_seq_len",
        ):
            if not isinstance(getattr(self, field), int) or getattr(self, field) <= 0:
                raise ValueError(
                    f"ModelConfig.{field} must be a positive int, got {getattr(self, field)!r}"
                )
        if (
            isinstance(self.num_labels, bool)
            or not isinstance(self.num_labels, int)
            or self.num_labels < 0
        ):
            raise ValueError(f"ModelConfig.num_labels must be an int >= 0, got {self.num_labels!r}")
        if not self.has_lm_head and self.num_labels == 0:
            raise ValueError(
                "ModelConfig.has_lm_head=False needs num_labels > 0 (a model with no head at all)"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelConfig.n_heads={self.n_heads} must be a multiple of "
                f"n_kv_heads={self.n_kv_heads} (grouped-query attention)"
            )
        if self.position_embedding == "rope" and self.head_dim % 2:
            raise ValueError(
                f"ModelConfig.head_dim={self.head_dim} must be even for rotary embeddings"
            )
        if self.layer_types is not None:
            if not isinstance(self.layer_types, tuple):
                object.__setattr__(self, "layer_types", tuple(self.layer_types))
            if len(self.layer_types) != self.n_layers:
                raise ValueError(
                    f"ModelConfig.layer_types has {len(self.layer_types)} entries but "
                    f"n_layers={self.n_layers}"
                )
            for t in self.layer_types:
                if t not in LAYER_TYPES:
                    bad("layer_types", t, LAYER_TYPES)
            if "sliding_attention" in self.layer_types and not self.sliding_window:
                raise ValueError(
                    "ModelConfig.layer_types has sliding_attention layers but sliding_window is None"
                )
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(
                f"ModelConfig.sliding_window must be positive or None, got {self.sliding_window}"
            )
        if self.rope_type == "llama3" and self.rope_high_freq_factor <= self.rope_low_freq_factor:
            raise ValueError(
                "ModelConfig.rope_high_freq_factor must exceed rope_low_freq_factor for llama3 rope"
            )

    @property
    def windows(self) -> tuple[int | None, ...]:
        """Per-layer sliding window (None = full causal attention)."""
        if self.sliding_window is None:
            return (None,) * self.n_layers
        if self.layer_types is None:
            return (self.sliding_window,) * self.n_layers
        return tuple(
            self.sliding_window if t == "sliding_attention" else None for t in self.layer_types
        )

    def replace(self, **overrides: Any) -> "ModelConfig":
        return dataclasses.replace(self, **overrides)

    def num_params(self) -> int:
        """Parameter count (embeddings included once when tied)."""
        d, f, n, k, h = self.d_model, self.d_ff, self.n_heads, self.n_kv_heads, self.head_dim
        attn = d * h * (n + 2 * k) + n * h * d
        attn += (n + 2 * k) * h * self.qkv_bias + d * self.out_bias + 2 * h * self.qk_norm
        mlp = (
            d * f * (3 if self.gated_mlp else 2)
            + (f * (2 if self.gated_mlp else 1) + d) * self.mlp_bias
        )
        norm = d * (2 if self.norm_type == "layer" else 1)
        block = attn + mlp + norm * (4 if self.post_norms else 2)
        total = self.n_layers * block + self.vocab_size * d + norm
        total += 0 if self.tie_embeddings or not self.has_lm_head else self.vocab_size * d
        total += d * self.num_labels
        total += self.max_seq_len * d if self.position_embedding == "learned" else 0
        return total


_LLAMA = dict(family="llama", norm_type="rms", activation="silu", gated_mlp=True)
_GEMMA = dict(
    norm_type="rms",
    norm_offset=True,
    activation="gelu_tanh",
    gated_mlp=True,
    embed_scale=True,
    tie_embeddings=True,
    norm_eps=1e-6,
)
_GPT2 = dict(
    family="gpt2",
    norm_type="layer",
    norm_eps=1e-5,
    activation="gelu_tanh",
    gated_mlp=False,
    qkv_bias=True,
    out_bias=True,
    mlp_bias=True,
    position_embedding="learned",
    tie_embeddings=True,
)

PRESETS: dict[str, ModelConfig] = {
    # test sizes: a few layers, d_model <= 64, vocab 256
    "tiny": ModelConfig(**_LLAMA),
    "tiny-qwen3": ModelConfig(family="qwen3", qk_norm=True, tie_embeddings=True, rope_theta=1e6),
    "tiny-gemma2": ModelConfig(
        family="gemma2",
        **_GEMMA,
        post_norms=True,
        n_layers=2,
        query_pre_attn_scalar=16.0,
        attn_softcap=50.0,
        final_logit_softcap=30.0,
        sliding_window=8,
        layer_types=("sliding_attention", "full_attention"),
    ),
    "tiny-gpt2": ModelConfig(**_GPT2, n_heads=4, n_kv_heads=4, head_dim=16, d_ff=256),
    # real shapes
    "gpt2-small": ModelConfig(
        **_GPT2,
        vocab_size=50257,
        d_model=768,
        n_layers=12,
        n_heads=12,
        n_kv_heads=12,
        head_dim=64,
        d_ff=3072,
        max_seq_len=1024,
    ),
    "llama3-8b": ModelConfig(
        **_LLAMA,
        vocab_size=128256,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        head_dim=128,
        d_ff=14336,
        max_seq_len=131072,
        norm_eps=1e-5,
        rope_theta=500_000.0,
        rope_type="llama3",
        rope_factor=8.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_len=8192,
    ),
    "llama3.2-1b": ModelConfig(
        **_LLAMA,
        vocab_size=128256,
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        head_dim=64,
        d_ff=8192,
        max_seq_len=131072,
        norm_eps=1e-5,
        rope_theta=500_000.0,
        rope_type="llama3",
        rope_factor=32.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_len=8192,
        tie_embeddings=True,
    ),
    "mistral-7b": ModelConfig(
        family="mistral",
        vocab_size=32000,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        head_dim=128,
        d_ff=14336,
        max_seq_len=32768,
        norm_eps=1e-5,
        sliding_window=4096,
    ),
    "qwen2.5-0.5b": ModelConfig(
        family="qwen2",
        vocab_size=151936,
        d_model=896,
        n_layers=24,
        n_heads=14,
        n_kv_heads=2,
        head_dim=64,
        d_ff=4864,
        max_seq_len=32768,
        qkv_bias=True,
        rope_theta=1_000_000.0,
        tie_embeddings=True,
    ),
    "qwen3-0.6b": ModelConfig(
        family="qwen3",
        vocab_size=151936,
        d_model=1024,
        n_layers=28,
        n_heads=16,
        n_kv_heads=8,
        head_dim=128,
        d_ff=3072,
        max_seq_len=40960,
        qk_norm=True,
        rope_theta=1_000_000.0,
        tie_embeddings=True,
    ),
    "qwen3-8b": ModelConfig(
        family="qwen3",
        vocab_size=151936,
        d_model=4096,
        n_layers=36,
        n_heads=32,
        n_kv_heads=8,
        head_dim=128,
        d_ff=12288,
        max_seq_len=40960,
        qk_norm=True,
        rope_theta=1_000_000.0,
    ),
    "gemma-2b": ModelConfig(
        family="gemma",
        **_GEMMA,
        vocab_size=256000,
        d_model=2048,
        n_layers=18,
        n_heads=8,
        n_kv_heads=1,
        head_dim=256,
        d_ff=16384,
        max_seq_len=8192,
    ),
    "gemma2-2b": ModelConfig(
        family="gemma2",
        **_GEMMA,
        post_norms=True,
        vocab_size=256000,
        d_model=2304,
        n_layers=26,
        n_heads=8,
        n_kv_heads=4,
        head_dim=256,
        d_ff=9216,
        max_seq_len=8192,
        query_pre_attn_scalar=256.0,
        attn_softcap=50.0,
        final_logit_softcap=30.0,
        sliding_window=4096,
        layer_types=("sliding_attention", "full_attention") * 13,
    ),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """A named preset with fields replaced, e.g. `get_preset("tiny", scan_layers=True)`."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise ValueError(f"get_preset({name!r}): unknown ModelConfig fields {sorted(unknown)}")
    return dataclasses.replace(PRESETS[name], **overrides)
