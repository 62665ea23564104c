"""Logits processors: pure functions [B, V] float32 logits -> [B, V] logits (removed tokens = -inf).

Applied in the order of `SamplingParams.process`: temperature, top-k, top-p, min-p (as in
Hugging Face `generate`). Every filter keeps at least the most likely token, so a row never ends
up with all of its mass removed.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def temperature_scale(logits, temperature: float):
    """logits / T (T > 0); T -> 0 approaches greedy decoding, which `sample_token` handles exactly.

    logits: [B, V] (any shape works); returns the same shape.
    """
    return logits / jnp.asarray(temperature, logits.dtype)


def top_k_filter(logits, k: int):
    """Keeps the k largest logits per row (all tokens tied with the k-th are kept too).

    logits: [B, V]; returns [B, V] with the removed tokens at -inf.
    """
    logits_BxV = logits
    if k >= logits_BxV.shape[-1]:
        return logits_BxV
    kth_Bx1 = jax.lax.top_k(logits_BxV, k)[0][:, -1:]
    return jnp.where(logits_BxV >= kth_Bx1, logits_BxV, NEG_INF)


def top_p_filter(logits, p: float):
    """Nucleus sampling (Holtzman et al., 2020): keeps the smallest set of most likely tokens whose
    probability reaches p, i.e. a token stays iff the mass of the tokens ranked above it is < p.

    logits: [B, V]; returns [B, V] with the removed tokens at -inf.
    """
    logits_BxV = logits
    if p >= 1.0:
        return logits_BxV
    order_BxV = jnp.argsort(-logits_BxV, axis=-1)
    sorted_BxV = jnp.take_along_axis(logits_BxV, order_BxV, axis=-1)
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    mass_above_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    keep_sorted_BxV = mass_above_BxV < p
    keep_sorted_BxV = keep_sorted_BxV.at[:, 0].set(True)
    # Scatter the decision back to vocabulary order.
    keep_BxV = (
        jnp.zeros_like(keep_sorted_BxV)
        .at[jnp.arange(logits_BxV.shape[0])[:, None], order_BxV]
        .set(keep_sorted_BxV)
    )
    return jnp.where(keep_BxV, logits_BxV, NEG_INF)


def min_p_filter(logits, min_p: float):
    """min-p sampling (Nguyen et al., 2024): keeps tokens with p(v) >= min_p * max_v p(v).

    logits: [B, V]; returns [B, V] with the removed tokens at -inf.
    """
    logits_BxV = logits
    if min_p <= 0.0:
        return logits_BxV
    # p(v) / p_max = exp(z_v - z_max): compare in log space, no normalisation needed.
    threshold_Bx1 = jnp.max(logits_BxV, axis=-1, keepdims=True) + jnp.log(min_p)
    return jnp.where(logits_BxV >= threshold_Bx1, logits_BxV, NEG_INF)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How the next token is drawn. Hashable: it is a static argument of the jitted sampler.

    temperature == 0 means greedy (argmax of the raw logits; the filters are then irrelevant).
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    def __post_init__(self):
        def bad(name, value, want):
            raise ValueError(f"sampling: {name}={value!r} is invalid; expected {want}")

        if not isinstance(self.temperature, (int, float)) or not self.temperature >= 0:
            bad("temperature", self.temperature, "a float >= 0 (0 = greedy)")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            bad("top_k", self.top_k, "None or an int >= 1")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            bad("top_p", self.top_p, "None or a float in (0, 1]")
        if self.min_p is not None and not 0.0 <= self.min_p <= 1.0:
            bad("min_p", self.min_p, "None or a float in [0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def process(self, logits):
        """Raw float32 logits [B, V] -> logits [B, V] of the distribution tokens are drawn from."""
        logits_BxV = logits
        logits_BxV = temperature_scale(logits_BxV, self.temperature)
        if self.top_k is not None:
            logits_BxV = top_k_filter(logits_BxV, self.top_k)
        if self.top_p is not None:
            logits_BxV = top_p_filter(logits_BxV, self.top_p)
        if self.min_p is not None:
            logits_BxV = min_p_filter(logits_BxV, self.min_p)
        return logits_BxV


def sample_token(logits, keys, params: SamplingParams):
    """Next tokens [B] int32 from raw logits [B, V], one PRNG key per row (keys: [B]), so a row's
    draw does not depend on which other rows share its batch."""
    logits_BxV, keys_B = logits, keys
    if params.greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    processed_BxV = params.process(logits_BxV.astype(jnp.float32))
    return jax.vmap(jax.random.categorical)(keys_B, processed_BxV).astype(jnp.int32)
