"""Policy-vs-reference evaluation on a task's held-out prompts.

`evaluate_policy` samples responses from the policy and from its reference to the same prompts
(with the same seeds: common random numbers, so an unchanged policy reproduces the reference's
samples exactly), scores them with the task's gold reward and verifier, estimates the sequence
KL(pi || ref) from temperature-1 policy samples with a fresh forward of both models, and ranks
gold-labelled held-out pairs by the implicit reward log pi - log ref.

Models are only sampled (`alignment.sampling.generate`) and scored (`model_logprobs` under one
`jax.jit` per model and shape bucket); no Flax here.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np

from alignment import models, sampling
from alignment.evaluation import metrics as M
from alignment.models.logprobs import model_logprobs

LENGTH_BUCKET = 16  # scored sequences are right-padded to a multiple of this (fewer recompiles)


# ------------------------------------------------------------------------------------ tokens


def encode_prompts(
    tokenizer, prompts: Sequence[str], *, chat_template: bool = False
) -> list[list[int]]:
    """Token ids the policy is conditioned on: BOS (when the tokenizer has one) + the prompt, as in
    training (`alignment.data.formatting`); with `chat_template`, a user turn plus the
    generation prompt rendered by the tokenizer's template."""
    bos = tokenizer.bos_id
    out = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"evaluation prompt {i} must be a non-empty string, got {prompt!r}")
        if chat_template:
            ids = list(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
                )
            )
        else:
            ids = list(tokenizer.encode(prompt, add_special_tokens=False))
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        out.append(ids)
    return out


def strip_eos(tokens: Sequence[int], eos_id: int | None) -> tuple[list[int], bool]:
    """(tokens before the first EOS, whether an EOS ended the response)."""
    tokens = [int(t) for t in tokens]
    if eos_id is not None and eos_id in tokens:
        return tokens[: tokens.index(eos_id)], True
    return tokens, False


# ------------------------------------------------------------------------------------ models


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def chunk_seed(seed: int, stream: int, chunk: int) -> int:
    """Seed of sampling call `chunk` of `stream` (0 = evaluation, 1 = KL samples), distinct for
    every (seed, stream, chunk) below 2**10 chunks."""
    return (int(seed) * 2048 + stream * 1024 + chunk) % (1 << 31)


def generate_all(
    model,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    eos_id: int | None,
    seed: int,
    batch_size: int,
    stream: int = 0,
    top_k=None,
    top_p=None,
) -> list[list[int]]:
    """New tokens (ending at and including EOS when one was sampled) for every prompt, sampled in
    batches of `batch_size` (the sampler rounds a batch up to a power of two itself)."""
    out: list[list[int]] = []
    for i, (lo, hi) in enumerate(_chunks(len(prompt_ids), batch_size)):
        result = sampling.generate(
            model,
            [list(p) for p in prompt_ids[lo:hi]],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_id=eos_id,
            seed=chunk_seed(seed, stream, i),
        )
        out.extend([int(t) for t in toks] for toks in result.tokens)
    return out


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _sequence_logps(graphdef, state, input_ids, attention_mask, loss_mask):
    logps_BxT = model_logprobs(models.merge(graphdef, state), input_ids, attention_mask, loss_mask)
    return logps_BxT.sum(axis=-1)


Scorer = Callable[[Sequence[Sequence[int]], Sequence[Sequence[int]]], np.ndarray]


def make_sequence_scorer(model, *, batch_size: int) -> Scorer:
    """fn(prompt_ids, response_ids) -> float64 [N] of log p(response | prompt) summed over response
    tokens, from a jitted forward of `model` (`model_logprobs`, float32 log-softmax). Batches are
    rounded up to a power of two and lengths to a multiple of LENGTH_BUCKET, and the compiled
    program is shared by models of the same structure (policy and reference)."""
    graphdef, state = models.split(model)
    max_len = int(model.config.max_seq_len)

    def score(prompt_ids, response_ids) -> np.ndarray:
        if len(prompt_ids) != len(response_ids):
            raise ValueError(f"scorer: {len(prompt_ids)} prompts but {len(response_ids)} responses")
        n = len(prompt_ids)
        if n == 0:
            return np.zeros((0,), np.float64)
        lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
        if max(lengths) > max_len:
            i = int(np.argmax(lengths))
            raise ValueError(
                f"sequence {i} (prompt + response) has {lengths[i]} tokens, more than the "
                f"model's max_seq_len={max_len}; lower max_new_tokens"
            )
        t = -(-max(lengths) // LENGTH_BUCKET) * LENGTH_BUCKET
        b = 1 << (min(batch_size, n) - 1).bit_length()  # power of two
        out = []
        for lo, hi in _chunks(n, b):
            ids = np.zeros((b, t), np.int32)
            attn = np.zeros((b, t), np.int32)
            loss = np.zeros((b, t), np.int32)
            for row in range(b):
                k = lo + row if lo + row < hi else lo  # pad the last batch with its first row
                p, r = prompt_ids[k], response_ids[k]
                ids[row, : len(p) + len(r)] = list(p) + list(r)
                attn[row, : len(p) + len(r)] = 1
                loss[row, len(p) : len(p) + len(r)] = 1
            out.append(
                np.asarray(_sequence_logps(graphdef, state, ids, attn, loss), np.float64)[: hi - lo]
            )
        logps = np.concatenate(out)
        bad = np.flatnonzero(~np.isfinite(logps))
        if bad.size:
            raise FloatingPointError(
                f"model log-probs are non-finite for {bad.size} sequence(s), first "
                f"sequence {int(bad[0])}: {logps[bad[0]]}"
            )
        return logps

    return score


# ------------------------------------------------------------------------------------ harness


@dataclasses.dataclass(frozen=True)
class Samples:
    """Responses to P prompts, K per prompt, flattened prompt-major (index p * K + k)."""

    tokens: list[list[int]]  # new tokens incl. EOS
    texts: list[str]  # decoded, EOS and special tokens removed
    finished: np.ndarray  # bool [P*K]: an EOS ended the response (else max_new_tokens cut it)
    lengths: np.ndarray  # int [P*K]: tokens incl. EOS
    unknown_tokens: int  # sampled ids the tokenizer cannot decode (see `decode_response`)


def decode_response(tokenizer, tokens: Sequence[int]) -> tuple[str, int]:
    """(text, number of ids outside the tokenizer's vocabulary). Models often have more embedding
    rows than the tokenizer has ids (vocab padded for sharding); such an id decodes to U+FFFD and
    is counted, so the gold reward sees that something was there and the report says how often."""
    n = tokenizer.vocab_size
    pieces, run, unknown = [], [], 0
    for t in tokens:
        if 0 <= t < n:
            run.append(t)
            continue
        unknown += 1
        pieces.append(tokenizer.decode(run, skip_special_tokens=True) + "\ufffd")
        run = []
    pieces.append(tokenizer.decode(run, skip_special_tokens=True))
    return "".join(pieces), unknown


def _decode(tokenizer, tokens: list[list[int]]) -> Samples:
    texts, finished, unknown = [], [], 0
    for toks in tokens:
        body, done = strip_eos(toks, tokenizer.eos_id)
        text, bad = decode_response(tokenizer, body)
        texts.append(text)
        finished.append(done)
        unknown += bad
    return Samples(
        tokens, texts, np.asarray(finished, bool), np.asarray([len(t) for t in tokens]), unknown
    )


def _check_args(num_prompts, samples_per_prompt, max_new_tokens, temperature, batch_size):
    for name, v, lo in (
        ("num_prompts", num_prompts, 1),
        ("samples_per_prompt", samples_per_prompt, 1),
        ("max_new_tokens", max_new_tokens, 1),
        ("batch_size", batch_size, 1),
    ):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"evaluate_policy: {name} must be an int >= {lo}, got {v!r}")
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(
            f"evaluate_policy: temperature must be a finite number >= 0, got {temperature!r}"
        )


def evaluate_policy(
    policy,
    reference,
    tokenizer,
    task,
    *,
    num_prompts: int,
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    split: str = "test",
    batch_size: int = 64,
    num_examples: int = 4,
    pairs=None,
    max_pairs: int = 512,
    chat_template: bool = False,
    top_k=None,
    top_p=None,
) -> dict[str, Any]:
    """Gold reward, win rate, KL, pass@k and ranking accuracy of `policy` against `reference`.

    - gold_reward: mean task gold reward of the policy's samples (at `temperature`);
      reference_gold_reward the same for the reference's samples.
    - win_rate: P(r(y_pi) > r(y_ref)) + P(=)/2 over all policy x reference sample pairs of a prompt.
    - kl: mean over temperature-1 policy samples of log pi(y|x) - log ref(y|x) (sequence sums from a
      fresh forward of both models; reuses the evaluation samples when temperature == 1 and no
      top-k/top-p is set, else draws separate ones). Responses cut at max_new_tokens make this the
      KL between the length-truncated distributions.
    - pass_at_k {k: value} (tasks with a verifier; None otherwise): Chen et al.'s unbiased estimator
      over the samples_per_prompt samples of each prompt.
    - ranking_accuracy: on held-out pairs (`pairs`, a list of (prompt, chosen, rejected) strings, or
      by default every pair of the reference's samples to one prompt with different gold rewards),
      the fraction ranked correctly by log pi - log ref (ties 1/2); None when there is no pair.
    """
    _check_args(num_prompts, samples_per_prompt, max_new_tokens, temperature, batch_size)
    if policy.config.vocab_size != reference.config.vocab_size:
        raise ValueError(
            f"policy vocab_size={policy.config.vocab_size} != reference vocab_size="
            f"{reference.config.vocab_size}: they must share a tokenizer"
        )
    prompts = list(task.prompts(split, num_prompts, seed))
    if not prompts:
        raise ValueError(f"task {task.name!r} split {split!r} gave no prompts to evaluate")
    k = samples_per_prompt
    prompt_ids = encode_prompts(tokenizer, prompts, chat_template=chat_template)
    flat_prompts = [p for p in prompts for _ in range(k)]
    flat_ids = [ids for ids in prompt_ids for _ in range(k)]
    eos = tokenizer.eos_id
    gen = dict(
        max_new_tokens=max_new_tokens, eos_id=eos, batch_size=batch_size, top_k=top_k, top_p=top_p
    )

    pol = _decode(
        tokenizer, generate_all(policy, flat_ids, temperature=temperature, seed=seed, **gen)
    )
    ref = _decode(
        tokenizer, generate_all(reference, flat_ids, temperature=temperature, seed=seed, **gen)
    )
    pol_r = task.gold_rewards(flat_prompts, pol.texts).astype(np.float64)
    ref_r = task.gold_rewards(flat_prompts, ref.texts).astype(np.float64)
    p = len(prompts)
    results: dict[str, Any] = {
        "task": task.name,
        "split": split,
        "num_prompts": p,
        "samples_per_prompt": k,
        "max_new_tokens": max_new_tokens,
        "temperature": float(temperature),
        "seed": seed,
    }
    results["gold_reward"], results["gold_reward_stderr"] = M.mean_stderr(pol_r)
    results["reference_gold_reward"], results["reference_gold_reward_stderr"] = M.mean_stderr(ref_r)
    results["win_rate"] = M.win_rate(pol_r.reshape(p, k), ref_r.reshape(p, k))
    results["response_length"] = float(pol.lengths.mean())
    results["reference_response_length"] = float(ref.lengths.mean())
    results["truncated_fraction"] = float(1.0 - pol.finished.mean())
    results["unknown_token_fraction"] = pol.unknown_tokens / max(int(pol.lengths.sum()), 1)

    # --- KL(pi || ref) from temperature-1 policy samples
    policy_score = make_sequence_scorer(policy, batch_size=batch_size)
    reference_score = make_sequence_scorer(reference, batch_size=batch_size)
    if temperature == 1.0 and top_k is None and top_p is None:
        kl_tokens, kl_note = pol.tokens, "evaluation samples"
    else:
        kl_tokens = generate_all(
            policy,
            flat_ids,
            temperature=1.0,
            seed=seed,
            stream=1,
            **{**gen, "top_k": None, "top_p": None},
        )
        kl_note = "separate temperature-1 samples"
    pi_logps = policy_score(flat_ids, kl_tokens)
    ref_logps = reference_score(flat_ids, kl_tokens)
    results["kl"] = M.kl_from_samples(pi_logps, ref_logps)
    results["kl_stderr"] = M.mean_stderr(pi_logps - ref_logps)[1]
    results["kl_samples"] = f"{len(kl_tokens)} {kl_note}"

    # --- verifier
    if getattr(task, "has_verifier", False):
        ks = M.default_ks(k)
        for name, s in (("pass_at_k", pol), ("reference_pass_at_k", ref)):
            ok = np.asarray(
                [bool(task.verify(q, y)) for q, y in zip(flat_prompts, s.texts)]
            ).reshape(p, k)
            results[name] = {str(kk): M.mean_pass_at_k(ok, kk) for kk in ks}
    else:
        results["pass_at_k"] = results["reference_pass_at_k"] = None

    # --- ranking accuracy on gold-labelled held-out pairs
    if pairs is not None:
        pairs = list(pairs)
        if not pairs:
            raise ValueError(
                "evaluate_policy: `pairs` is empty; pass None to rank pairs of reference samples"
            )
        for i, pair in enumerate(pairs):
            if len(pair) != 3 or not all(isinstance(x, str) for x in pair):
                raise ValueError(
                    f"evaluate_policy: pair {i} must be (prompt, chosen, rejected) strings, "
                    f"got {pair!r}"
                )
        pair_ids = encode_prompts(tokenizer, [q for q, _, _ in pairs], chat_template=chat_template)
        tail = [] if eos is None else [eos]  # responses end with EOS, as in training

        def enc(text):
            return list(tokenizer.encode(text, add_special_tokens=False)) + tail

        chosen, rejected = [enc(c) for _, c, _ in pairs], [enc(r) for _, _, r in pairs]
        source = "pairs"
    else:
        triples = M.gold_ranked_pairs(ref_r.reshape(p, k))
        if len(triples) > max_pairs:
            keep = np.random.default_rng(seed).choice(len(triples), max_pairs, replace=False)
            triples = [triples[i] for i in sorted(keep)]
        pair_ids = [prompt_ids[q] for q, _, _ in triples]
        chosen = [ref.tokens[q * k + i] for q, i, _ in triples]
        rejected = [ref.tokens[q * k + j] for q, _, j in triples]
        source = "reference samples with different gold rewards"
    results["ranking_pairs"] = len(chosen)
    results["ranking_pairs_source"] = source
    if chosen:
        margin_c = policy_score(pair_ids, chosen) - reference_score(pair_ids, chosen)
        margin_r = policy_score(pair_ids, rejected) - reference_score(pair_ids, rejected)
        results["ranking_accuracy"] = M.ranking_accuracy(margin_c, margin_r)
    else:
        results["ranking_accuracy"] = None

    results["examples"] = [
        {
            "prompt": prompts[i],
            "policy": pol.texts[i * k],
            "policy_gold_reward": float(pol_r[i * k]),
            "reference": ref.texts[i * k],
            "reference_gold_reward": float(ref_r[i * k]),
        }
        for i in range(min(num_examples, p))
    ]
    return results
