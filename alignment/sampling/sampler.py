"""Batched generation with a KV cache: one jitted prefill, then a `lax.while_loop` decode.

Two levels:
- `generate(model, prompts, ...)`: lists of token ids in, `GenerateOutput` (new tokens and their
  log-probs, no padding) out. Prompts are left-padded and the batch and prompt length rounded up
  to powers of two, so repeated calls hit a handful of compiled programs.
- `sample_arrays(graphdef, state, prompt_ids, prompt_mask, key, ...)`: pure and jittable,
  padded arrays in and out, for online learners that sample inside their own jitted code.

The log-probs returned are log_softmax(raw model logits)[token]: the probability of the sampled
token under the *policy itself*, before temperature / top-k / top-p / min-p reshape the sampling
distribution. These are the "old log-probs" of PPO/GRPO: a fresh forward pass of the same
parameters over prompt + completion reproduces them (up to float error).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from alignment import models
from alignment.sampling.processors import SamplingParams, sample_token

MIN_PROMPT_BUCKET = 8


@dataclasses.dataclass(frozen=True)
class SampleArrays:
    """Padded output of `sample_arrays` (B rows, N = max_new_tokens).

    tokens: [B, N] int32, pad_id after a sequence stops.
    logprobs: [B, N] float32 log-prob of each token under the raw model logits, 0 after stop.
    lengths: [B] int32 number of new tokens, the stop token included.
    stopped: [B] bool, ended on a stop token (False: ran out of max_new_tokens).
    num_steps: int32 scalar, decode steps run (< N when every row stopped early).
    """

    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    stopped: jax.Array
    num_steps: jax.Array


jax.tree_util.register_dataclass(
    SampleArrays,
    data_fields=["tokens", "logprobs", "lengths", "stopped", "num_steps"],
    meta_fields=[],
)


@dataclasses.dataclass(frozen=True)
class GenerateOutput:
    """Result of `generate`, one entry per prompt.

    tokens[i]: the new tokens of prompt i, without padding, ending at and including the EOS/stop
      token when one was produced.
    logprobs[i]: log p(token) under the model's raw logits (log_softmax before temperature and
      filtering), i.e. the policy's own log-probs ("old log-probs" for PPO).
    finish_reasons[i]: "stop" (EOS or a stop id) or "length" (max_new_tokens reached).
    """

    tokens: list[list[int]]
    logprobs: list[list[float]]
    finish_reasons: list[str]


def _row_keys(key, row_ids_B, step):
    # A row's randomness depends on (seed, row, step) only, not on the batch it is padded into.
    return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(key, r), step))(row_ids_B)


def sample_arrays(
    graphdef,
    state,
    prompt_ids,
    prompt_mask,
    key,
    *,
    max_new_tokens: int,
    params: SamplingParams = SamplingParams(),
    stop_ids: tuple[int, ...] = (),
    pad_id: int = 0,
    active=None,
    cache_len: int | None = None,
    logits_processor=None,
) -> SampleArrays:
    """Samples up to `max_new_tokens` per row after left-padded prompts; pure and jittable.

    graphdef/state: `alignment.models.split(model)` (graphdef, params and the other static args
    must be static under jit). prompt_ids: [B, P] int, left-padded. prompt_mask: [B, P], 1 on
    prompt tokens, 0 on (left) padding; every row needs at least one prompt token. active: [B]
    bool or None; rows that are False are treated as already stopped (batch padding). The loop
    exits as soon as every row has stopped.
    logits_processor: optional `f(logits, tokens, step) -> logits` ([B, V] float32 logits, [B, N]
    tokens so far) applied to the raw logits before temperature and filters (e.g. value
    guidance, banned tokens); it changes what is sampled, not the returned log-probs, which stay
    those of the raw model.
    """
    prompt_ids_BxP, prompt_mask_BxP, active_B = prompt_ids, prompt_mask, active
    b, p = prompt_ids_BxP.shape
    n = max_new_tokens
    cache_len = p + n if cache_len is None else cache_len
    if cache_len < p + n:  # writes past the cache would be clamped silently under jit
        raise ValueError(
            f"sample_arrays: cache_len={cache_len} < prompt length {p} + max_new_tokens {n}"
        )
    model = models.merge(graphdef, state)
    stop_ids_S = jnp.asarray(stop_ids if stop_ids else (-1,), jnp.int32)
    row_ids_B = jnp.arange(b, dtype=jnp.int32)
    done_B = jnp.zeros((b,), bool) if active_B is None else ~jnp.asarray(active_B, bool)

    cache = model.init_cache(b, cache_len)
    hidden_BxPxD, cache = model(prompt_ids_BxP, prompt_mask_BxP, cache=cache, return_hidden=True)
    # Left padding puts every row's last prompt token in the last column: only it needs logits.
    logits_BxV = model.logits_from_hidden(hidden_BxPxD[:, -1])

    def cond(carry):
        step, _, _, done_B, *_ = carry
        return (step < n) & ~jnp.all(done_B)

    def body(carry):
        step, cache, logits_BxV, done_B, tokens_BxN, logprobs_BxN, lengths_B, stopped_B = carry
        sample_logits_BxV = (
            logits_BxV
            if logits_processor is None
            else logits_processor(logits_BxV, tokens_BxN, step)
        )
        token_B = sample_token(sample_logits_BxV, _row_keys(key, row_ids_B, step), params)
        logp_B = jnp.take_along_axis(
            jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1), token_B[:, None], axis=-1
        )[:, 0]
        token_B = jnp.where(done_B, pad_id, token_B)
        tokens_BxN = tokens_BxN.at[:, step].set(token_B)
        logprobs_BxN = logprobs_BxN.at[:, step].set(jnp.where(done_B, 0.0, logp_B))
        lengths_B = lengths_B + (~done_B).astype(jnp.int32)
        hit_stop_B = ~done_B & jnp.any(token_B[:, None] == stop_ids_S[None, :], axis=-1)
        stopped_B = stopped_B | hit_stop_B
        done_B = done_B | hit_stop_B
        hidden_Bx1xD, cache = model(
            token_B[:, None], jnp.ones((b, 1), jnp.int32), cache=cache, return_hidden=True
        )
        logits_BxV = model.logits_from_hidden(hidden_Bx1xD[:, 0])
        return step + 1, cache, logits_BxV, done_B, tokens_BxN, logprobs_BxN, lengths_B, stopped_B

    init = (
        jnp.zeros((), jnp.int32),
        cache,
        logits_BxV,
        done_B,
        jnp.full((b, n), pad_id, jnp.int32),
        jnp.zeros((b, n), jnp.float32),
        jnp.zeros((b,), jnp.int32),
        jnp.zeros((b,), bool),
    )
    steps, *_, tokens_BxN, logprobs_BxN, lengths_B, stopped_B = jax.lax.while_loop(cond, body, init)
    return SampleArrays(tokens_BxN, logprobs_BxN, lengths_B, stopped_B, steps)


# Counts traces of the jitted sampler (one per shape bucket and settings); tests read it.
TRACE_COUNT = [0]


@functools.partial(
    jax.jit,
    static_argnames=(
        "graphdef",
        "max_new_tokens",
        "params",
        "stop_ids",
        "pad_id",
        "logits_processor",
    ),
)
def _sample_jit(
    graphdef,
    state,
    prompt_ids_BxP,
    prompt_mask_BxP,
    active_B,
    key,
    *,
    max_new_tokens,
    params,
    stop_ids,
    pad_id,
    logits_processor,
):
    TRACE_COUNT[0] += 1
    return sample_arrays(
        graphdef,
        state,
        prompt_ids_BxP,
        prompt_mask_BxP,
        key,
        max_new_tokens=max_new_tokens,
        params=params,
        stop_ids=stop_ids,
        pad_id=pad_id,
        active=active_B,
        logits_processor=logits_processor,
    )


def _bucket(n: int, minimum: int = 1) -> int:
    return max(minimum, 1 << max(0, (n - 1).bit_length()))


def left_pad(prompts: Sequence[Sequence[int]], length: int, batch: int, pad_id: int = 0):
    """(ids [batch, length], mask, active [batch]) with prompts right-aligned; extra rows repeat
    prompt 0 (a real, harmless input) and are marked inactive."""
    ids = np.full((batch, length), pad_id, np.int32)
    mask = np.zeros((batch, length), np.int32)
    for i in range(batch):
        prompt = prompts[i] if i < len(prompts) else prompts[0]
        ids[i, length - len(prompt) :] = prompt
        mask[i, length - len(prompt) :] = 1
    active = np.arange(batch) < len(prompts)
    return ids, mask, active


def _validate(prompts, vocab_size, max_seq_len, max_new_tokens):
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if isinstance(prompts, np.ndarray) and prompts.ndim == 2:
        prompts = list(prompts)
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError(
            f"generate: prompts must be a non-empty list of token-id lists, got {prompts!r:.80}"
        )
    clean = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, (str, bytes)):
            raise TypeError(f"generate: prompt {i} is a string; pass token ids (tokenizer.encode)")
        arr = np.asarray(prompt)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(
                f"generate: prompt {i} must be a non-empty list of token ids, got shape {arr.shape}"
            )
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(
                f"generate: prompt {i} holds {arr.dtype} values, expected integer token ids"
            )
        bad = np.flatnonzero((arr < 0) | (arr >= vocab_size))
        if bad.size:
            raise ValueError(
                f"generate: prompt {i} has token id {int(arr[bad[0]])} at position "
                f"{int(bad[0])}, outside the vocabulary [0, {vocab_size})"
            )
        if arr.size + max_new_tokens > max_seq_len:
            raise ValueError(
                f"generate: prompt {i} has {arr.size} tokens; with max_new_tokens="
                f"{max_new_tokens} that exceeds the model's max_seq_len={max_seq_len}"
            )
        clean.append(arr.astype(np.int32))
    return clean


def _validate_id(name, value, vocab_size):
    if value is not None and not (isinstance(value, (int, np.integer)) and 0 <= value < vocab_size):
        raise ValueError(f"generate: {name}={value!r} must be a token id in [0, {vocab_size})")


def generate(
    model,
    prompts,
    *,
    max_new_tokens,
    temperature=0.0,
    top_k=None,
    top_p=None,
    eos_id=None,
    seed=0,
    min_p=None,
    stop_ids=None,
    pad_id=0,
    logits_processor=None,
) -> GenerateOutput:
    """Continues each prompt (a list of token ids) by up to `max_new_tokens` tokens.

    temperature 0 is greedy; otherwise tokens are drawn from softmax(processed logits / T) with the
    optional top-k, top-p (nucleus) and min-p filters. A sequence stops after `eos_id` or any of
    `stop_ids`; the loop ends when all have stopped. The same seed gives the same samples.
    Returned log-probs are under the raw model logits (see the module docstring).
    logits_processor: see `sample_arrays`; pass the same (hashable) function object across calls
    to reuse the compiled sampler.
    """
    config = model.config
    prompts = _validate(prompts, config.vocab_size, config.max_seq_len, max_new_tokens)
    params = SamplingParams(temperature=float(temperature), top_k=top_k, top_p=top_p, min_p=min_p)
    stops = tuple(sorted({*([] if eos_id is None else [eos_id]), *(stop_ids or ())}))
    for name, value in [("eos_id", eos_id), ("pad_id", pad_id)] + [("stop_ids", s) for s in stops]:
        _validate_id(name, value, config.vocab_size)
    longest = max(len(p) for p in prompts)
    # Cap the bucket so the cache (prompt bucket + new tokens) never exceeds max_seq_len.
    length = min(_bucket(longest, MIN_PROMPT_BUCKET), config.max_seq_len - max_new_tokens)
    ids, mask, active = left_pad(prompts, length, _bucket(len(prompts)), pad_id)
    graphdef, state = models.split(model)
    out = _sample_jit(
        graphdef,
        state,
        jnp.asarray(ids),
        jnp.asarray(mask),
        jnp.asarray(active),
        jax.random.key(seed),
        max_new_tokens=int(max_new_tokens),
        params=params,
        stop_ids=tuple(int(s) for s in stops),
        pad_id=int(pad_id),
        logits_processor=logits_processor,
    )
    tokens, logprobs, lengths, stopped = jax.device_get(
        (out.tokens, out.logprobs, out.lengths, out.stopped)
    )
    n = len(prompts)
    return GenerateOutput(
        tokens=[tokens[i, : lengths[i]].tolist() for i in range(n)],
        logprobs=[logprobs[i, : lengths[i]].tolist() for i in range(n)],
        finish_reasons=["stop" if stopped[i] else "length" for i in range(n)],
    )
