"""Rollouts for the online learners: prompts -> KV-cache samples -> scored rollout batch.

    prompt_ids, prompt_mask, _ = encode_prompt_batch(tokenizer, prompts, ...)  # left-padded, fixed P
    sample = sampler(params, prompt_ids, prompt_mask, key)     # one compile per (B, P, N)
    batch = assemble(prompt_ids, prompt_mask, sample.tokens, sample.logprobs, sample.lengths, pad)

The rollout batch is the policy's view of its own samples, in the project's log-prob convention
(`logps[:, t] = log p(x_t | x_<t)`): `input_ids` = left-padded prompt then the response,
`attention_mask` 1 on real tokens (the response up to and including its stop token),
`loss_mask` 1 on response tokens, `old_logps` the sampler's log-probs of those tokens under the
raw policy logits (PPO's behaviour policy; equal to a fresh forward, see the tests). Everything
here is arrays and numpy except the jitted closures, which merge the model via `alignment.models`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np

from alignment import advantages, models, tasks
from alignment import rewards as rewards_lib
from alignment.evaluation.harness import decode_response, encode_prompts, strip_eos
from alignment.models.logprobs import model_logprobs
from alignment.rewards import programmatic
from alignment.rewards.base import RewardInputs, check_rewards
from alignment.sampling import SamplingParams, sample_arrays


def encode_prompt_batch(
    tokenizer, prompts: Sequence[str], *, chat_template: bool, max_prompt_len: int
):
    """(ids [N, P], mask [N, P], id lists) with prompts right-aligned in P = `max_prompt_len` columns
    (BOS + prompt, or the chat template's user turn + generation prompt, as in SFT). A prompt longer
    than P is an error naming it: cutting it would change the task the reward scores."""
    id_lists = encode_prompts(tokenizer, prompts, chat_template=chat_template)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    ids = np.full((len(prompts), max_prompt_len), pad, np.int32)
    mask = np.zeros((len(prompts), max_prompt_len), np.int32)
    for i, p in enumerate(id_lists):
        if len(p) > max_prompt_len:
            raise ValueError(
                f"online.max_prompt_len={max_prompt_len} is too short for prompt {i} "
                f"({len(p)} tokens): {prompts[i]!r}; raise online.max_prompt_len"
            )
        ids[i, max_prompt_len - len(p) :] = p
        mask[i, max_prompt_len - len(p) :] = 1
    return ids, mask, id_lists


TRACE_COUNT = [0]  # traces of the rollout sampler (one per shape bucket); tests read it


@functools.lru_cache(maxsize=8)  # runs in one process (tests, sweeps) share the compiled program
def make_sampler(
    graphdef,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    stop_ids: tuple[int, ...],
    pad_id: int,
) -> Callable:
    """Jitted `sampler(params, prompt_ids, prompt_mask, key) -> SampleArrays` ([B, P] prompts).

    `params` is the learner's own parameter pytree (no copy is made): sampling reads the buffers
    the next update will donate. Static settings are bound here, so the program is compiled once
    per (B, P) shape; the online loop keeps both fixed."""
    sp = SamplingParams(
        temperature=float(temperature), top_k=top_k or None, top_p=top_p if top_p < 1.0 else None
    )

    @jax.jit
    def sampler(params, prompt_ids, prompt_mask, key):
        TRACE_COUNT[0] += 1
        return sample_arrays(
            graphdef,
            params,
            prompt_ids,
            prompt_mask,
            key,
            max_new_tokens=max_new_tokens,
            params=sp,
            stop_ids=stop_ids,
            pad_id=pad_id,
        )

    return sampler


@functools.lru_cache(maxsize=8)
def make_forward(graphdef, chunk_size: int) -> Callable:
    """Jitted `forward(params, input_ids, attention_mask, loss_mask) -> logps` ([B, T] float32), for
    the frozen models' log-probs of a rollout (reference, base)."""

    @jax.jit
    def forward(params, input_ids, attention_mask, loss_mask):
        return model_logprobs(
            models.merge(graphdef, params),
            input_ids,
            attention_mask,
            loss_mask,
            chunk_size=chunk_size,
        )

    return forward


def assemble(
    prompt_ids: np.ndarray,
    prompt_mask: np.ndarray,
    tokens: np.ndarray,
    logprobs: np.ndarray,
    lengths: np.ndarray,
    pad_id: int,
) -> dict[str, np.ndarray]:
    """Host arrays of the rollout batch ([B, P + N]) from prompts [B, P] and sampled `tokens`,
    `logprobs` [B, N] with `lengths` [B]; see the module docstring."""
    prompt_ids_BxP, prompt_mask_BxP, tokens_BxN, logprobs_BxN, lengths_B = (
        prompt_ids,
        prompt_mask,
        tokens,
        logprobs,
        lengths,
    )
    b, n = tokens_BxN.shape
    resp_mask_BxN = (np.arange(n)[None, :] < np.asarray(lengths_B)[:, None]).astype(np.int32)
    tokens = np.where(resp_mask_BxN == 1, tokens_BxN, pad_id).astype(np.int32)
    zeros = np.zeros_like(prompt_mask_BxP)
    return {
        "input_ids": np.concatenate([prompt_ids_BxP, tokens], axis=1).astype(np.int32),
        "attention_mask": np.concatenate([prompt_mask_BxP, resp_mask_BxN], axis=1).astype(np.int32),
        "loss_mask": np.concatenate([zeros, resp_mask_BxN], axis=1).astype(np.int32),
        "old_logps": np.concatenate(
            [np.zeros(zeros.shape, np.float32), np.where(resp_mask_BxN == 1, logprobs_BxN, 0.0)],
            axis=1,
        ).astype(np.float32),
    }


def decode_responses(tokenizer, tokens: np.ndarray, lengths: np.ndarray):
    """(texts, id lists without EOS, ended-on-EOS flags) of the sampled responses ([B, N], [B])."""
    texts, ids, ended = [], [], []
    for row, length in zip(np.asarray(tokens), np.asarray(lengths)):
        body, stopped = strip_eos(row[: int(length)], tokenizer.eos_id)
        ids.append(body)
        ended.append(stopped)
        texts.append(decode_response(tokenizer, body)[0])
    return texts, ids, np.asarray(ended, bool)


# ----------------------------------------------------------------------------- rewards


def make_reward(reward_cfg, *, task, tokenizer, mesh) -> tuple[Callable, str]:
    """`(reward_fn(RewardInputs) -> float32 [N], name)` from `config.reward`, always guarded by
    `check_rewards` (a wrong shape or a NaN names the reward and the first bad row).

    Kinds "task" / "verifier" score with the loop's own task object (its `online.task_kwargs`
    knobs included) times `reward.scale`; other kinds (a reward model, a log-ratio of two
    folders) come from `alignment.rewards.make_reward`. "log_ratio" with an empty `path` is
    Self-Rewarding PPO's, computed by the online loop from the policy's starting weights."""
    kind = reward_cfg.kind
    if kind in ("task", "verifier"):
        r_task = task
        if reward_cfg.task and reward_cfg.task != task.name:
            r_task = tasks.get_task(reward_cfg.task)
        name = f"{kind}:{r_task.name}"
        fn = (
            programmatic.task_reward(r_task)
            if kind == "task"
            else programmatic.verifier_reward(r_task)
        )
        scale = float(reward_cfg.scale)
    else:
        name = f"{kind}:{reward_cfg.path}"
        fn, scale = rewards_lib.make_reward(reward_cfg, tokenizer=tokenizer, mesh=mesh), 1.0

    def guarded(inputs: RewardInputs) -> np.ndarray:
        return check_rewards(fn(inputs), len(inputs), name) * np.float32(scale)

    return guarded, name


# ----------------------------------------------------------------------------- host helpers


def sequence_sums(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[B] float32 sums of `x` [B, T] over the positions where `mask` [B, T] is non-zero."""
    return np.sum(np.where(mask != 0, x, 0.0), axis=-1).astype(np.float32)


def minibatches(batch: dict[str, Any], num_minibatches: int, rng: np.random.Generator):
    """Shuffled equal minibatches of a host batch (every row used once per epoch)."""
    b = len(next(iter(batch.values())))
    if b % num_minibatches:
        raise ValueError(
            f"rollout batch of {b} rows does not split into online.num_minibatches="
            f"{num_minibatches}"
        )
    order = rng.permutation(b).reshape(num_minibatches, -1)
    for rows in order:
        rows = np.sort(rows)
        yield {k: v[rows] for k, v in batch.items()}


def group_advantages(rewards, *, kind: str, group_size: int, use_std: bool = True):
    """[N] sequence advantages of `rewards` [N], groups of `group_size` contiguous samples per prompt."""
    if kind == "rloo":
        out = advantages.rloo(rewards=rewards, group_size=group_size)
    else:
        out = advantages.group_normalized(rewards=rewards, group_size=group_size, use_std=use_std)
    return np.asarray(out, np.float32)
