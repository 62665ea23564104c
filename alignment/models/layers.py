"""Building blocks of the decoder: norms, rotary embeddings, attention, MLP, one block.

Every parameter is an `nnx.Param(value, logical_axes=...)`; `alignment.sharding` maps the names
to mesh axes. Shapes use einsum letters: B batch, T query length, S key/cache length, D model
width, N query heads, K kv heads, G = N/K heads per kv head, H head dim, F mlp width.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignment.models.config import ModelConfig

# Masked scores use a large finite value, not -inf, so a fully masked row (a left-padding
# query) gives a finite uniform distribution instead of NaN.
_MASK_VALUE = -1e30
# Window used for full-attention layers so every layer can share one (scanned) code path.
NO_WINDOW = np.iinfo(np.int32).max


def dtype_of(name: str):
    return jnp.dtype(name)


def _param(rngs: nnx.Rngs | None, shape, axes, cfg: ModelConfig, init: str = "normal"):
    dtype = dtype_of(cfg.param_dtype)
    if init == "normal":
        value = cfg.init_std * jax.random.normal(rngs.params(), shape, jnp.float32)
    elif init == "zeros":
        value = jnp.zeros(shape, jnp.float32)
    elif init == "ones":
        value = jnp.ones(shape, jnp.float32)
    else:
        raise ValueError(f"unknown init {init!r}")
    return nnx.Param(value.astype(dtype), logical_axes=axes)


class Norm(nnx.Module):
    """RMSNorm `x / sqrt(mean(x^2) + eps) * w` (Zhang & Sennrich 2019) or LayerNorm (Ba et al. 2016).

    `norm_offset` (Gemma) scales by `(1 + w)` in float32 before casting back; plain RMSNorm
    (Llama) casts the normalised x back first and then multiplies by w, as the references do.
    """

    def __init__(self, dim: int, cfg: ModelConfig):
        self.kind, self.eps, self.offset = cfg.norm_type, cfg.norm_eps, cfg.norm_offset
        self.scale = _param(None, (dim,), ("norm",), cfg, "zeros" if cfg.norm_offset else "ones")
        if cfg.norm_type == "layer":
            self.bias = _param(None, (dim,), ("norm",), cfg, "zeros")

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        if self.kind == "layer":
            x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        if self.kind == "layer":
            w, b = self.scale[...].astype(jnp.float32), self.bias[...].astype(jnp.float32)
            return (y * w + b).astype(x.dtype)
        if self.offset:
            return (y * (1.0 + self.scale[...].astype(jnp.float32))).astype(x.dtype)
        return self.scale[...].astype(x.dtype) * y.astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse frequencies `theta^(-2i/H)` (Su et al. 2021), with linear or Llama-3 scaling.

    Computed in float32 like the Hugging Face reference so positions round identically.
    """
    h = cfg.head_dim
    inv = 1.0 / (
        np.float32(cfg.rope_theta) ** (np.arange(0, h, 2, dtype=np.float32) / np.float32(h))
    )
    inv = inv.astype(np.float32)
    if cfg.rope_type == "linear":
        inv = inv / np.float32(cfg.rope_factor)
    elif cfg.rope_type == "llama3":
        factor, lo, hi = (
            np.float32(cfg.rope_factor),
            np.float32(cfg.rope_low_freq_factor),
            np.float32(cfg.rope_high_freq_factor),
        )
        old = np.float32(cfg.rope_original_max_len)
        wavelen = np.float32(2 * math.pi) / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def rope_tables(positions, cfg: ModelConfig):
    """cos, sin [B, T, H] (halves duplicated, rotate-half convention) in the compute dtype.

    positions: [B, T] int token positions.
    """
    inv = jnp.asarray(rope_inv_freq(cfg))
    freqs = positions.astype(jnp.float32)[..., None] * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    dtype = dtype_of(cfg.dtype)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x, cos, sin):
    """Rotary embedding of x [B, T, N, H] with the tables cos, sin [B, T, H] of `rope_tables`."""
    x_BxTxNxH, cos_BxTxH, sin_BxTxH = x, cos, sin
    half = x_BxTxNxH.shape[-1] // 2
    rotated = jnp.concatenate([-x_BxTxNxH[..., half:], x_BxTxNxH[..., :half]], axis=-1)
    return x_BxTxNxH * cos_BxTxH[:, :, None] + rotated * sin_BxTxH[:, :, None]


def _activation(name: str):
    return {
        "silu": jax.nn.silu,
        "relu": jax.nn.relu,
        "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    }[name]


def attend(q, k, v, allowed, *, scale: float, softcap: float | None, impl: str):
    """softmax(scale q k^T [soft-capped], masked) v with grouped-query heads; softmax in float32.

    q: [B, T, N, H] queries; k, v: [B, S, K, H] keys and values (K kv heads, N % K == 0);
    allowed: [B, T, S] bool, True where query t may attend to key s. Returns [B, T, N, H].
    """
    q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, allowed_BxTxS = q, k, v, allowed
    if impl == "auto":
        impl = "einsum" if jax.default_backend() == "cpu" else "fused"
    if impl == "fused" and softcap is None:
        # cuDNN/XLA fused kernel where available; same masking semantics (finite mask value).
        return jax.nn.dot_product_attention(
            q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask=allowed_BxTxS[:, None], scale=scale
        )
    b, t, n, h = q_BxTxNxH.shape
    k = k_BxSxKxH.shape[2]
    q = q_BxTxNxH.reshape(b, t, k, n // k, h)
    s_BxKxGxTxS = (
        jnp.einsum("btkgh,bskh->bkgts", q, k_BxSxKxH, preferred_element_type=jnp.float32) * scale
    )
    if softcap is not None:
        s_BxKxGxTxS = jnp.tanh(s_BxKxGxTxS / softcap) * softcap
    s_BxKxGxTxS = jnp.where(allowed_BxTxS[:, None, None], s_BxKxGxTxS, _MASK_VALUE)
    p = jax.nn.softmax(s_BxKxGxTxS, axis=-1).astype(v_BxSxKxH.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", p, v_BxSxKxH)
    return out.reshape(b, t, n, h)


class Attention(nnx.Module):
    """Multi-head attention with GQA, optional qkv/out bias, qk-norm (Qwen3), rope, soft-capping."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.cfg = cfg
        self.q = _param(rngs, (d, n, h), ("embed", "heads", "head_dim"), cfg)
        self.k = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), cfg)
        self.v = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), cfg)
        self.o = _param(rngs, (n, h, d), ("heads", "head_dim", "embed"), cfg)
        if cfg.qkv_bias:
            self.q_bias = _param(None, (n, h), ("heads", "head_dim"), cfg, "zeros")
            self.k_bias = _param(None, (k, h), ("kv_heads", "head_dim"), cfg, "zeros")
            self.v_bias = _param(None, (k, h), ("kv_heads", "head_dim"), cfg, "zeros")
        if cfg.out_bias:
            self.o_bias = _param(None, (d,), ("embed",), cfg, "zeros")
        if cfg.qk_norm:
            self.q_norm = Norm(h, cfg)
            self.k_norm = Norm(h, cfg)

    def __call__(self, x, *, rope, allowed, kv=None, index=None):
        """Attention output [B, T, D] and the updated (k, v) cache slices (None without `kv`).

        x: [B, T, D]; rope: (cos, sin) of `rope_tables` or None; allowed: [B, T, S] bool;
        kv: this layer's (k, v) cache [B, S, K, H] each, written at slot `index`.
        """
        cfg = self.cfg
        x_BxTxD = x
        dtype = x_BxTxD.dtype
        q = jnp.einsum("btd,dnh->btnh", x_BxTxD, self.q[...].astype(dtype))
        k = jnp.einsum("btd,dkh->btkh", x_BxTxD, self.k[...].astype(dtype))
        v = jnp.einsum("btd,dkh->btkh", x_BxTxD, self.v[...].astype(dtype))
        if cfg.qkv_bias:
            q = q + self.q_bias[...].astype(dtype)
            k = k + self.k_bias[...].astype(dtype)
            v = v + self.v_bias[...].astype(dtype)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        new_kv = None
        if kv is not None:
            k_cache, v_cache = kv
            k_cache = jax.lax.dynamic_update_slice(
                k_cache, k.astype(k_cache.dtype), (0, index, 0, 0)
            )
            v_cache = jax.lax.dynamic_update_slice(
                v_cache, v.astype(v_cache.dtype), (0, index, 0, 0)
            )
            new_kv = (k_cache, v_cache)
            k, v = k_cache.astype(dtype), v_cache.astype(dtype)
        scale = (cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5
        out = attend(
            q, k, v, allowed, scale=scale, softcap=cfg.attn_softcap, impl=cfg.attention_impl
        )
        y = jnp.einsum("btnh,nhd->btd", out, self.o[...].astype(dtype))
        if cfg.out_bias:
            y = y + self.o_bias[...].astype(dtype)
        return y, new_kv


class MLP(nnx.Module):
    """Gated `down(act(gate x) * up x)` (SwiGLU/GeGLU, Shazeer 2020) or plain `down(act(up x))`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.d_ff
        self.cfg = cfg
        if cfg.gated_mlp:
            self.gate = _param(rngs, (d, f), ("embed", "mlp"), cfg)
        self.up = _param(rngs, (d, f), ("embed", "mlp"), cfg)
        self.down = _param(rngs, (f, d), ("mlp", "embed"), cfg)
        if cfg.mlp_bias:
            if cfg.gated_mlp:
                self.gate_bias = _param(None, (f,), ("mlp",), cfg, "zeros")
            self.up_bias = _param(None, (f,), ("mlp",), cfg, "zeros")
            self.down_bias = _param(None, (d,), ("embed",), cfg, "zeros")

    def __call__(self, x):
        """[B, T, D] -> [B, T, D]."""
        x_BxTxD = x
        cfg, dtype = self.cfg, x_BxTxD.dtype
        act = _activation(cfg.activation)
        up = x_BxTxD @ self.up[...].astype(dtype)
        if cfg.mlp_bias:
            up = up + self.up_bias[...].astype(dtype)
        if cfg.gated_mlp:
            gate = x_BxTxD @ self.gate[...].astype(dtype)
            if cfg.mlp_bias:
                gate = gate + self.gate_bias[...].astype(dtype)
            h_BxTxF = act(gate) * up
        else:
            h_BxTxF = act(up)
        y = h_BxTxF @ self.down[...].astype(dtype)
        if cfg.mlp_bias:
            y = y + self.down_bias[...].astype(dtype)
        return y


class Block(nnx.Module):
    """Pre-norm residual block; with `post_norms` (Gemma2) each sublayer output is normed too."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.attn_norm = Norm(cfg.d_model, cfg)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = Norm(cfg.d_model, cfg)
        self.mlp = MLP(cfg, rngs=rngs)
        if cfg.post_norms:
            self.attn_post_norm = Norm(cfg.d_model, cfg)
            self.mlp_post_norm = Norm(cfg.d_model, cfg)

    def __call__(self, x, *, rope, allowed, dist, window, kv=None, index=None):
        """(x + attn + mlp [B, T, D], new (k, v) cache slices or None).

        x: [B, T, D]; allowed: [B, T, S] bool (causal, padding, segments); dist: [B, T, S] int
        query position minus key position, for the sliding `window`; rope, kv, index: see
        `Attention`.
        """
        x_BxTxD = x
        # Sliding window on positions: a query sees keys with pos_q - pos_k < window.
        allowed_BxTxS = allowed & (dist < window)
        h, new_kv = self.attn(
            self.attn_norm(x_BxTxD), rope=rope, allowed=allowed_BxTxS, kv=kv, index=index
        )
        if self.cfg.post_norms:
            h = self.attn_post_norm(h)
        x_BxTxD = x_BxTxD + h
        h = self.mlp(self.mlp_norm(x_BxTxD))
        if self.cfg.post_norms:
            h = self.mlp_post_norm(h)
        return x_BxTxD + h, new_kv
