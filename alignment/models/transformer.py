"""One Flax NNX decoder-only transformer for the Llama / Mistral / Qwen / Gemma / GPT-2 families.

`Transformer(config, rngs=...)` builds the model; `model(input_ids, attention_mask)` returns
float32 logits [B, T, V]. A KV cache (`model.init_cache`) turns the same call into prefill and
decode steps. Layers are either an `nnx.List` of blocks or, with `scan_layers`, one block whose
parameters carry a leading "layers" axis and are run with `jax.lax.scan`; the same seed gives
the same parameters in both layouts.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignment.models.config import ModelConfig
from alignment.models.layers import NO_WINDOW, Block, Norm, _param, dtype_of, rope_tables
from alignment.sharding import state_shardings

_REMAT_POLICIES = {
    "full": None,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _concrete(x):
    """x as a numpy array when it is known now (eager call), else None (inside a trace)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_ids(ids_BxT, vocab_size: int, name: str = "input_ids"):
    ids = _concrete(ids_BxT)
    if ids is None or ids.size == 0:
        return
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} contains token id {int(ids[where])} at (row, col) {where}, outside the "
            f"vocabulary [0, {vocab_size})"
        )


def _stacked_blocks(cfg: ModelConfig, keys):
    """One Block whose parameters are stacked over layers (leading logical axis "layers")."""
    graphdef = []

    def one(key):
        gd, state = nnx.split(Block(cfg, rngs=nnx.Rngs(params=key)))
        graphdef.append(gd)
        return state

    state = jax.vmap(one)(keys)
    state = jax.tree.map(
        lambda v: v.replace(logical_axes=("layers",) + tuple(v.get_metadata()["logical_axes"])),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    return nnx.merge(graphdef[0], state)


class Transformer(nnx.Module):
    """Decoder-only LM; see `ModelConfig` for the family switches."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        cfg = self.config = config
        self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg)
        if cfg.position_embedding == "learned":
            self.pos_embed = _param(
                rngs, (cfg.max_seq_len, cfg.d_model), ("position", "embed"), cfg
            )
        keys = jax.random.split(rngs.params(), cfg.n_layers)
        if cfg.scan_layers:
            self.layers = _stacked_blocks(cfg, keys)
        else:
            self.layers = nnx.List(
                [Block(cfg, rngs=nnx.Rngs(params=keys[i])) for i in range(cfg.n_layers)]
            )
        self.final_norm = Norm(cfg.d_model, cfg)
        if not cfg.tie_embeddings and cfg.has_lm_head:
            self.lm_head = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg)
        if cfg.num_labels:  # created last: the other parameters stay those of the LM with this seed
            self.score = _param(rngs, (cfg.d_model, cfg.num_labels), ("embed", "value_head"), cfg)

    # ---------------------------------------------------------------- cache
    def init_cache(self, batch_size: int, max_len: int, dtype=None) -> dict:
        """Empty KV cache: k, v [L, B, S, K, H]; pos [B, S] (-1 = empty slot); index (next slot)."""
        cfg = self.config
        dtype = dtype_of(cfg.dtype) if dtype is None else jnp.dtype(dtype)
        shape = (cfg.n_layers, batch_size, max_len, cfg.n_kv_heads, cfg.head_dim)
        return {
            "k": jnp.zeros(shape, dtype),
            "v": jnp.zeros(shape, dtype),
            "pos": jnp.full((batch_size, max_len), -1, jnp.int32),
            "index": jnp.zeros((), jnp.int32),
        }

    # ---------------------------------------------------------------- head
    def unembed_weight(self):
        """[D, V] output projection in the compute dtype (tied embedding transposed, or lm_head)."""
        if not self.config.tie_embeddings and not self.config.has_lm_head:
            raise ValueError(
                "this model has no LM head (has_lm_head=False, e.g. a reward model): it gives "
                "scores (alignment.models.sequence_scores), not logits"
            )
        w = self.embed[...].T if self.config.tie_embeddings else self.lm_head[...]
        return w.astype(dtype_of(self.config.dtype))

    def logits_from_hidden(self, hidden):
        """float32 logits `h W` (+ final soft-cap `c tanh(z / c)`, Gemma2) from final normed
        hidden states.

        hidden: [..., D] (e.g. [B, T, D]); returns [..., V].
        """
        logits = jnp.einsum(
            "...d,dv->...v", hidden, self.unembed_weight(), preferred_element_type=jnp.float32
        )
        cap = self.config.final_logit_softcap
        if cap is not None:
            logits = jnp.tanh(logits / cap) * cap
        return logits

    def scores(self, hidden):
        """float32 `h W_score` from final normed hidden states (reward / value head).

        hidden: [..., D] (e.g. [B, T, D]); returns [..., num_labels].
        """
        if not self.config.num_labels:
            raise ValueError("this model has no score head (ModelConfig.num_labels=0)")
        w = self.score[...].astype(dtype_of(self.config.dtype))
        return jnp.einsum("...d,dl->...l", hidden, w, preferred_element_type=jnp.float32)

    # ---------------------------------------------------------------- forward
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        *,
        positions=None,
        segment_ids=None,
        cache=None,
        return_hidden=False,
    ):
        """Logits [B, T, V] float32 (or final normed hidden [B, T, D]); with `cache`, also the new cache.

        input_ids: [B, T] int token ids.
        attention_mask: [B, T], 1 = token, 0 = padding (left or right); default all ones.
        positions: [B, T] int; default `max(cumsum(mask) - 1, 0)` (continuing after the cached
        tokens when a cache is given).
        segment_ids: [B, T] int, packed documents; a token attends only to earlier tokens of its
        segment. Not supported together with `cache`.
        cache: from `init_cache`; the call then returns `(out, new_cache)`.
        return_hidden: return the final normed hidden states [B, T, D] instead of logits.
        """
        cfg = self.config
        input_ids_BxT = jnp.asarray(input_ids)
        if input_ids_BxT.ndim != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {input_ids_BxT.shape}")
        b, t = input_ids_BxT.shape
        _check_ids(input_ids_BxT, cfg.vocab_size)
        if attention_mask is None:
            mask_BxT = jnp.ones((b, t), bool)
        else:
            mask_BxT = jnp.asarray(attention_mask).astype(bool)
            if mask_BxT.shape != (b, t):
                raise ValueError(
                    f"attention_mask shape {mask_BxT.shape} != input_ids shape {(b, t)}"
                )
        if cache is not None and segment_ids is not None:
            raise ValueError(
                "segment_ids (packed sequences) are not supported together with a KV cache"
            )

        if cache is not None:
            s = cache["k"].shape[2]
            index = jnp.asarray(cache["index"], jnp.int32)
            idx = _concrete(index)
            if idx is not None and int(idx) + t > s:
                raise ValueError(
                    f"KV cache overflow: writing {t} tokens at slot {int(idx)} of a cache with "
                    f"max_len {s}"
                )
            if cache["pos"].shape != (b, s) or cache["k"].shape[:2] != (cfg.n_layers, b):
                raise ValueError(
                    f"cache shapes k {cache['k'].shape}, pos {cache['pos'].shape} do not match "
                    f"n_layers {cfg.n_layers} and batch {b}"
                )
        positions_BxT = positions
        if positions_BxT is None:
            positions_BxT = jnp.maximum(jnp.cumsum(mask_BxT, axis=1, dtype=jnp.int32) - 1, 0)
            if cache is not None:
                positions_BxT = positions_BxT + (jnp.max(cache["pos"], axis=1) + 1)[:, None]
        positions_BxT = jnp.asarray(positions_BxT, jnp.int32)
        if cfg.position_embedding == "learned":
            pos = _concrete(positions_BxT)
            if pos is not None and pos.size and (pos.min() < 0 or pos.max() >= cfg.max_seq_len):
                raise ValueError(
                    f"positions must lie in [0, max_seq_len={cfg.max_seq_len}) for learned "
                    f"position embeddings, got range [{pos.min()}, {pos.max()}]"
                )

        # Keys are described by their slot and position; pos = -1 marks padding / empty slots.
        new_pos_BxT = jnp.where(mask_BxT, positions_BxT, -1)
        if cache is not None:
            k_pos_BxS = jax.lax.dynamic_update_slice(cache["pos"], new_pos_BxT, (0, index))
            q_slot_T = index + jnp.arange(t, dtype=jnp.int32)
            k_slot_S = jnp.arange(s, dtype=jnp.int32)
        else:
            index = None
            k_pos_BxS = new_pos_BxT
            q_slot_T = k_slot_S = jnp.arange(t, dtype=jnp.int32)
        allowed_BxTxS = (k_slot_S[None, None, :] <= q_slot_T[None, :, None]) & (
            k_pos_BxS[:, None, :] >= 0
        )
        if segment_ids is not None:
            seg = jnp.asarray(segment_ids)
            allowed_BxTxS = allowed_BxTxS & (seg[:, :, None] == seg[:, None, :])
        dist_BxTxS = positions_BxT[:, :, None] - k_pos_BxS[:, None, :]

        dtype = dtype_of(cfg.dtype)
        x = jnp.take(self.embed[...], input_ids_BxT, axis=0).astype(dtype)
        if cfg.embed_scale:
            x = x * jnp.asarray(math.sqrt(cfg.d_model), dtype)
        if cfg.position_embedding == "learned":
            x = x + jnp.take(self.pos_embed[...], positions_BxT, axis=0).astype(dtype)
        rope = rope_tables(positions_BxT, cfg) if cfg.position_embedding == "rope" else None

        x, new_k, new_v = self._run_layers(
            x, rope=rope, allowed=allowed_BxTxS, dist=dist_BxTxS, cache=cache, index=index
        )
        hidden = self.final_norm(x)
        out = hidden if return_hidden else self.logits_from_hidden(hidden)
        if cache is None:
            return out
        return out, {"k": new_k, "v": new_v, "pos": k_pos_BxS, "index": index + t}

    def _run_layers(self, x, *, rope, allowed, dist, cache, index):
        cfg = self.config

        def make_layer(graphdef):
            def layer(state, x, window, kv):
                block = nnx.merge(graphdef, state)
                return block(
                    x, rope=rope, allowed=allowed, dist=dist, window=window, kv=kv, index=index
                )

            if cfg.remat_policy == "none":
                return layer
            # Inside scan the loop already blocks CSE, so prevent_cse is only needed unrolled.
            return jax.checkpoint(
                layer, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers
            )

        windows = [NO_WINDOW if w is None else w for w in cfg.windows]

        if cfg.scan_layers:
            graphdef, state = nnx.split(self.layers)
            layer = make_layer(graphdef)
            kv_xs = None if cache is None else (cache["k"], cache["v"])

            def body(x, xs):
                st, window, kv = xs
                x, new_kv = layer(st, x, window, kv)
                return x, new_kv

            x, new_kv = jax.lax.scan(body, x, (state, jnp.asarray(windows, jnp.int32), kv_xs))
            return (x, None, None) if cache is None else (x, *new_kv)

        new_k, new_v = [], []
        for i, blk in enumerate(self.layers):
            graphdef, state = nnx.split(blk)
            kv = None if cache is None else (cache["k"][i], cache["v"][i])
            x, kv = make_layer(graphdef)(state, x, jnp.int32(windows[i]), kv)
            if cache is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
        if cache is None:
            return x, None, None
        return x, jnp.stack(new_k), jnp.stack(new_v)


def create_sharded(config: ModelConfig, mesh, seed: int = 0, rules=None) -> Transformer:
    """A `Transformer` whose parameters are created already sharded on `mesh`.

    The abstract model (`nnx.eval_shape`) gives each parameter's logical axes; a jitted init with
    those out_shardings then materialises every shard on its own device, never the whole model.
    """
    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(seed)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh, rules)

    @jax.jit
    def init():
        state = nnx.split(Transformer(config, rngs=nnx.Rngs(seed)))[1]
        return jax.lax.with_sharding_constraint(state, shardings)

    return nnx.merge(graphdef, init())
