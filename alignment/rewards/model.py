"""Model rewards: a Bradley-Terry reward model and the log-ratio of two frozen policies.

    reward_model:  r(x, y) = s_phi(x ++ y ++ EOS) at the last real token
    log_ratio:     r(x, y) = sum_t log p_path(y_t | x, y_<t) - log p_base(y_t | x, y_<t)

The log-ratio is DPO's implicit reward without beta (Rafailov et al., 2023; set reward.scale to
beta), as Self-Rewarding / implicit-reward PPO use it. Sequences are prompt_ids + response_ids
(+ EOS, reward.append_eos, as the engine trains: responses arrive EOS-stripped), right-padded to
a multiple of reward.length_bucket and scored reward.batch_size rows per call of one jitted
forward per shape; parameters are loaded once (onto `mesh` when given) and never change.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from alignment import models, sharding
from alignment.models.logprobs import model_logprobs
from alignment.rewards.base import RewardFn, RewardInputs
from alignment.tokenizer import Tokenizer


def resolve_eos(cfg, tokenizer) -> int | None:
    """The EOS id appended to each response (None when reward.append_eos is off)."""
    if not cfg.append_eos:
        return None
    if tokenizer is None:
        try:
            tokenizer = Tokenizer.from_pretrained(cfg.path)
        except Exception as e:  # noqa: BLE001 (re-raised with the key to fix)
            raise ValueError(
                f"reward.append_eos=True needs an EOS id: pass tokenizer= to make_reward or save a "
                f"tokenizer in reward.path={cfg.path!r} ({e})"
            ) from None
    if tokenizer.eos_id is None:
        raise ValueError("reward.append_eos=True but the tokenizer has no EOS token")
    return int(tokenizer.eos_id)


def pack(
    inputs: RewardInputs,
    *,
    eos_id: int | None,
    length_bucket: int,
    max_len: int,
    vocab_size: int,
    name: str,
):
    """(ids_NxT, attention_NxT, response_mask_NxT) int32, right-padded with 0 to a multiple of the bucket."""
    rows, starts = [], []
    for i, (p, r) in enumerate(zip(inputs.prompt_ids, inputs.response_ids)):
        p, r = [int(t) for t in p], [int(t) for t in r]
        if not p:
            raise ValueError(
                f"reward {name!r}: row {i} has no prompt tokens (prompt_ids is empty); model rewards "
                "score the response given the prompt"
            )
        seq = p + r + ([] if eos_id is None else [eos_id])
        if len(seq) > max_len:
            raise ValueError(
                f"reward {name!r}: row {i} has {len(seq)} tokens (prompt {len(p)} + response {len(r)}"
                f"{' + EOS' if eos_id is not None else ''}), more than the model's max_seq_len={max_len}"
            )
        bad = [t for t in seq if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(
                f"reward {name!r}: row {i} holds token id {bad[0]} outside the model's vocabulary "
                f"[0, {vocab_size})"
            )
        rows.append(seq)
        starts.append(len(p))
    t = max([len(s) for s in rows] + [1])
    t = min(max_len, int(math.ceil(t / length_bucket) * length_bucket))
    n = len(rows)
    ids, attn, resp = (np.zeros((n, t), np.int32) for _ in range(3))
    for i, (seq, start) in enumerate(zip(rows, starts)):
        ids[i, : len(seq)] = seq
        attn[i, : len(seq)] = 1
        resp[i, start : len(seq)] = 1
    return ids, attn, resp


def _placer(mesh, batch_size: int):
    if mesh is None:
        return lambda x: x
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % shards:
        target = sharding.replicated(mesh)
    else:
        target = sharding.batch_sharding(mesh, 2)
    return lambda x: jax.device_put(x, target)


def _batched(fn, arrays, batch_size: int, place) -> np.ndarray:
    """fn(*[batch_size, T] arrays) -> [batch_size], over all rows; the last batch padded with empty rows."""
    n = arrays[0].shape[0]
    outs = []
    for s in range(0, n, batch_size):
        chunk = [a[s : s + batch_size] for a in arrays]
        k = chunk[0].shape[0]
        if k < batch_size:  # one shape per bucket: pad with all-padding rows, dropped below
            chunk = [
                np.concatenate([c, np.zeros((batch_size - k,) + c.shape[1:], c.dtype)])
                for c in chunk
            ]
        outs.append((fn(*[place(c) for c in chunk]), k))
    return (
        np.concatenate([np.asarray(o)[:k] for o, k in outs]) if outs else np.zeros((0,), np.float32)
    )


def _load(path: str, dtype: str, mesh, *, classifier: bool):
    model = models.from_pretrained(path, dtype=dtype, mesh=mesh)
    cfg = model.config
    if classifier and cfg.num_labels != 1:
        raise ValueError(
            f"reward.path={path!r} is not a one-label reward model (num_labels={cfg.num_labels}); "
            "export one with `python -m experiments.train --config configs/reward_model.py`"
        )
    if not classifier and not cfg.has_lm_head and not cfg.tie_embeddings:
        raise ValueError(
            f"{path!r} has no LM head (a reward model?); a log-ratio reward needs two policies"
        )
    graphdef, state = models.split(model)
    return graphdef, state, cfg


def reward_model_reward(
    path: str,
    *,
    batch_size: int = 32,
    length_bucket: int = 32,
    eos_id: int | None = None,
    dtype: str = "float32",
    mesh=None,
) -> RewardFn:
    """r(x, y) = score of the exported reward model `path` at the last real token of x ++ y (++ EOS)."""
    graphdef, state, cfg = _load(path, dtype, mesh, classifier=True)

    @jax.jit
    def score(state, ids, attn):
        return models.sequence_scores(models.merge(graphdef, state), ids, attn)

    place = _placer(mesh, batch_size)

    def reward(inputs: RewardInputs) -> np.ndarray:
        ids, attn, _ = pack(
            inputs,
            eos_id=eos_id,
            length_bucket=length_bucket,
            max_len=cfg.max_seq_len,
            vocab_size=cfg.vocab_size,
            name=f"reward_model:{path}",
        )
        return _batched(lambda i, a: score(state, i, a), [ids, attn], batch_size, place).astype(
            np.float32
        )

    reward.__name__ = "reward_model_reward"
    return reward


def log_ratio_reward(
    path: str,
    base_path: str,
    *,
    batch_size: int = 32,
    length_bucket: int = 32,
    eos_id: int | None = None,
    dtype: str = "float32",
    chunk_size: int = 256,
    mesh=None,
) -> RewardFn:
    """r(x, y) = sum over response tokens (and EOS) of log p_path - log p_base; both models frozen."""
    g1, s1, c1 = _load(path, dtype, mesh, classifier=False)
    g2, s2, c2 = _load(base_path, dtype, mesh, classifier=False)
    if c1.vocab_size != c2.vocab_size:
        raise ValueError(
            f"log_ratio: reward.path has vocab_size {c1.vocab_size} but reward.base_path has "
            f"{c2.vocab_size}; the two models must share a tokenizer"
        )

    @jax.jit
    def ratio(s1, s2, ids, attn, resp):
        lp1 = model_logprobs(models.merge(g1, s1), ids, attn, resp, chunk_size=chunk_size)
        lp2 = model_logprobs(models.merge(g2, s2), ids, attn, resp, chunk_size=chunk_size)
        return jnp.sum(lp1 - lp2, axis=-1)

    place = _placer(mesh, batch_size)
    max_len = min(c1.max_seq_len, c2.max_seq_len)

    def reward(inputs: RewardInputs) -> np.ndarray:
        arrays = pack(
            inputs,
            eos_id=eos_id,
            length_bucket=length_bucket,
            max_len=max_len,
            vocab_size=c1.vocab_size,
            name=f"log_ratio:{path}",
        )
        return _batched(
            lambda i, a, r: ratio(s1, s2, i, a, r), list(arrays), batch_size, place
        ).astype(np.float32)

    reward.__name__ = "log_ratio_reward"
    return reward
