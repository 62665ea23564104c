"""Per-token log-probs of given labels without holding [B, T, V] float32 logits at once.

    log p(y_t) = z_t[y_t] - logsumexp(z_t),   z_t = cap * tanh((h_t W) / cap)  (cap optional)
    H_t        = logsumexp(z_t) - sum_v softmax(z_t)_v z_t,v                   (entropy)

`token_logprobs` computes this from the final hidden states and the [D, V] unembedding in
sequence chunks of `chunk_size` positions with `lax.map`; each chunk's body is rematerialised
(`jax.checkpoint`), so the backward pass recomputes one chunk's logits at a time too and the peak
extra memory is O(B * chunk_size * V) instead of O(B * T * V) (cf. the chunked cross-entropy of
Liger-Kernel / "Cut Your Losses in Large-Vocabulary Language Models", Wijmans et al. 2024).
Chunks run along T, not over flattened B*T tokens, so a batch sharded over the data axes stays
sharded inside every chunk.

Masked positions are exactly 0 (selected with `where`, so labels there may be anything, e.g.
-100). An unmasked label outside [0, V) gives NaN, so a data bug surfaces in the loss instead of
reading a clamped, wrong token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DEFAULT_CHUNK_SIZE = 256


def _softcap(logits, softcap):
    return logits if softcap is None else jnp.tanh(logits / softcap) * softcap


def _label_logprobs(logits_NxV, labels_N, return_entropy):
    """log-softmax at the labels (and the entropy) from float32 logits."""
    lse_N = jax.nn.logsumexp(logits_NxV, axis=-1)
    label_logit_N = jnp.take_along_axis(
        logits_NxV, labels_N[..., None], axis=-1, mode="fill", fill_value=jnp.nan
    )[..., 0]
    logps_N = label_logit_N - lse_N
    if not return_entropy:
        return logps_N, None
    probs_NxV = jax.nn.softmax(logits_NxV, axis=-1)
    entropy_N = lse_N - jnp.sum(probs_NxV * logits_NxV, axis=-1)
    return logps_N, entropy_N


def _check_shapes(fn, labels_BxT, mask_BxT, leading):
    if labels_BxT.ndim != 2 or labels_BxT.shape != leading:
        raise ValueError(
            f"{fn}: labels shape {labels_BxT.shape} must equal the leading [B, T] = "
            f"{leading} of the logits/hidden states"
        )
    if mask_BxT is not None and mask_BxT.shape != leading:
        raise ValueError(f"{fn}: mask shape {mask_BxT.shape} must equal {leading}")
    if not jnp.issubdtype(labels_BxT.dtype, jnp.integer):
        raise TypeError(f"{fn}: labels must be integer token ids, got {labels_BxT.dtype}")


def _apply_mask(values_BxT, mask_BxT):
    if mask_BxT is None:
        return values_BxT
    return jnp.where(mask_BxT.astype(bool), values_BxT, 0.0)


def naive_token_logprobs(logits, labels, mask=None, *, softcap=None, return_entropy=False):
    """Reference: log_softmax(logits)[labels] (times mask) from full [B, T, V] logits, in float32.

    logits: [B, T, V]; labels: [B, T] int; mask: [B, T] or None (0 gives exactly 0 there).
    Returns logps [B, T], or (logps, entropy) [B, T] each with `return_entropy`.
    """
    logits_BxTxV, labels_BxT, mask_BxT = logits, jnp.asarray(labels), mask
    _check_shapes("naive_token_logprobs", labels_BxT, mask_BxT, logits_BxTxV.shape[:2])
    logits = _softcap(logits_BxTxV.astype(jnp.float32), softcap)
    logps, entropy = _label_logprobs(logits, labels_BxT, return_entropy)
    logps = _apply_mask(logps, mask_BxT)
    return (logps, _apply_mask(entropy, mask_BxT)) if return_entropy else logps


def token_logprobs(
    hidden,
    unembed,
    labels,
    mask=None,
    *,
    chunk_size=DEFAULT_CHUNK_SIZE,
    softcap=None,
    return_entropy=False,
    remat=True,
):
    """log p(labels_t | h_t) with logits `h_t W` computed `chunk_size` positions at a time.

    Equal to `naive_token_logprobs(einsum(h, W), ...)` (float32 accumulation, optional final
    soft-cap as in Gemma 2) in value and gradient (w.r.t. hidden and unembedding), without ever
    holding more than [B, chunk_size, V] float32 logits, forward or backward.

    `remat=False` keeps every chunk's logits for the backward pass instead of recomputing them:
    [B, T, V] float32 residuals (the naive memory) but 2*B*T*D*V fewer FLOPs per step, which is
    the cheaper trade where memory allows (large batch x small vocab, or a FLOPs benchmark).
    hidden: [B, T, D] final normed hidden states; unembed: [D, V]; labels: [B, T] int;
    mask: [B, T] or None (0 gives exactly 0 there).
    Returns logps [B, T], or (logps, entropy) [B, T] each with `return_entropy`.
    """
    hidden_BxTxD, unembed_DxV, labels_BxT, mask_BxT = hidden, unembed, jnp.asarray(labels), mask
    if hidden_BxTxD.ndim != 3:
        raise ValueError(f"token_logprobs: hidden must be [B, T, D], got {hidden_BxTxD.shape}")
    b, t, d = hidden_BxTxD.shape
    if unembed_DxV.ndim != 2 or unembed_DxV.shape[0] != d:
        raise ValueError(f"token_logprobs: unembed shape {unembed_DxV.shape} must be [D={d}, V]")
    _check_shapes("token_logprobs", labels_BxT, mask_BxT, (b, t))
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"token_logprobs: chunk_size must be a positive int, got {chunk_size!r}")
    if t == 0:
        empty = jnp.zeros((b, 0), jnp.float32)
        return (empty, empty) if return_entropy else empty
    c = min(chunk_size, t)
    n = -(-t // c)
    pad = n * c - t
    if pad:  # padded positions compute harmless values on label 0 and are sliced off below
        hidden_BxTxD = jnp.pad(hidden_BxTxD, ((0, 0), (0, pad), (0, 0)))
        labels_BxT = jnp.pad(labels_BxT, ((0, 0), (0, pad)))
    hidden_NxBxCxD = hidden_BxTxD.reshape(b, n, c, d).swapaxes(0, 1)
    labels_NxBxC = labels_BxT.reshape(b, n, c).swapaxes(0, 1)

    def chunk(h_BxCxD, labels_BxC, w_DxV):
        logits = jnp.einsum("bcd,dv->bcv", h_BxCxD, w_DxV, preferred_element_type=jnp.float32)
        logps, entropy = _label_logprobs(_softcap(logits, softcap), labels_BxC, return_entropy)
        return (logps, entropy) if return_entropy else (logps,)

    if remat:  # backward recomputes this chunk's logits instead of storing all of them
        chunk = jax.checkpoint(chunk)

    outs = jax.lax.map(lambda xs: chunk(xs[0], xs[1], unembed_DxV), (hidden_NxBxCxD, labels_NxBxC))
    outs = [o.swapaxes(0, 1).reshape(b, n * c)[:, :t] for o in outs]
    logps = _apply_mask(outs[0], mask_BxT)
    return (logps, _apply_mask(outs[1], mask_BxT)) if return_entropy else logps


def shift_to_tokens(values, mask):
    """Aligns next-token values to the token they score: out[:, 0] = 0, out[:, t] = v[:, t-1],
    times mask.

    values: [B, T-1]; mask: [B, T]; returns [B, T].
    """
    out_BxT = jnp.pad(values, ((0, 0), (1, 0)))
    return jnp.where(mask.astype(bool), out_BxT, 0.0)


def model_logprobs(
    model,
    input_ids,
    attention_mask,
    loss_mask,
    *,
    segment_ids=None,
    positions=None,
    chunk_size=DEFAULT_CHUNK_SIZE,
    return_entropy=False,
    remat=True,
):
    """Per-token log-probs of `input_ids` under `model`, in the project convention.

    logps_BxT[:, t] = log p(x_t | x_<t) * loss_mask[:, t] for t >= 1, and 0 at t = 0. Positions
    whose previous token is padding or belongs to another packed segment are 0 as well: no token
    is predicted across a document boundary. Sequence log-prob = logps_BxT.sum(-1).
    Returns logps_BxT, or (logps_BxT, entropy_BxT) where entropy_BxT[:, t] is the entropy of the
    distribution that predicted x_t.
    """
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"model_logprobs: input_ids must be [B, T], got shape {input_ids.shape}")
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    attention_mask, loss_mask = jnp.asarray(attention_mask), jnp.asarray(loss_mask)
    for name, arr in (
        ("attention_mask", attention_mask),
        ("loss_mask", loss_mask),
        ("segment_ids", segment_ids),
        ("positions", positions),
    ):
        if arr is not None and jnp.shape(arr) != input_ids.shape:
            raise ValueError(
                f"model_logprobs: {name} shape {jnp.shape(arr)} != input_ids shape "
                f"{input_ids.shape}"
            )
    hidden_BxTxD = model(
        input_ids, attention_mask, positions=positions, segment_ids=segment_ids, return_hidden=True
    )
    valid_BxT = loss_mask.astype(bool) & attention_mask.astype(bool)
    valid_BxT = valid_BxT.at[:, 1:].set(valid_BxT[:, 1:] & attention_mask[:, :-1].astype(bool))
    if segment_ids is not None:
        segment_ids = jnp.asarray(segment_ids)
        valid_BxT = valid_BxT.at[:, 1:].set(
            valid_BxT[:, 1:] & (segment_ids[:, 1:] == segment_ids[:, :-1])
        )
    valid_BxT = valid_BxT.at[:, 0].set(False)
    out = token_logprobs(
        hidden_BxTxD[:, :-1],
        model.unembed_weight(),
        input_ids[:, 1:],
        valid_BxT[:, 1:],
        chunk_size=chunk_size,
        softcap=model.config.final_logit_softcap,
        return_entropy=return_entropy,
        remat=remat,
    )
    if return_entropy:
        return shift_to_tokens(out[0], valid_BxT), shift_to_tokens(out[1], valid_BxT)
    return shift_to_tokens(out, valid_BxT)
