"""RSO: statistical rejection sampling (Liu et al., 2023, "Statistical Rejection Sampling
Improves Preference Optimization"); the method card is docs/methods.md section 4.

Target: the KL-regularised optimum `pi_r(y|x) ∝ pi_sft(y|x) * exp(r(x, y) / beta)`. Per prompt,
draw N candidates from pi_sft, score them, and keep M of them by rejection sampling: a
candidate with reward r is accepted with probability `pi_r / (M_x pi_sft) = exp((r - r_max)/beta)`
where `r_max` (the envelope) is the largest reward among the candidates not yet accepted,
recomputed each round, until M are accepted (the paper's Algorithm 1 in the finite-candidate
form of its appendix code). The accepted samples are paired (random or tournament,
`alignment.learners.pairs`), labelled by reward, and trained on with `hinge`
(`relu(1 - gamma*h)`, the paper's hinge-norm) or `dpo` (the paper's sigmoid-norm,
`-logsig(gamma*h)`), gamma = the loss's `beta` (0.05 in the paper), reference = pi_sft.

Note: this library's `sigmoid_norm` loss is *length-normalised* DPO; RSO's "sigmoid-norm" is
plain DPO normalised by the SFT policy, i.e. `dpo`. Both are allowed; `dpo` is the paper's.

This module holds the reusable pieces (the sampler, the target distribution); the pipeline
(SFT stage -> sample -> score -> rejection-sample -> pair -> preference stage, its caches)
is `experiments/pipelines/rso.py`, config `configs/rso.py`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SAMPLERS = ("rso", "sft")
PAIRINGS = ("random", "tournament")
LOSSES = ("hinge", "dpo", "sigmoid_norm")


# ----------------------------------------------------------------------------- Algorithm 1


@dataclasses.dataclass(frozen=True)
class Accepted:
    """Result of `rejection_sample`: `index` [G, M] int, `index[g]` the candidate columns of
    group g in acceptance order; `rounds` [G] the rounds each group needed; `first_round_rate`
    the mean fraction of a group's candidates accepted in round 1 (an estimate of 1/M_x before
    the without-replacement correction)."""

    index: np.ndarray
    rounds: np.ndarray
    first_round_rate: float


def _check_rewards(rewards, mask, name="rewards"):
    r = np.asarray(rewards)
    if r.ndim != 2 or not np.issubdtype(r.dtype, np.number):
        raise ValueError(
            f"{name} must be a 2-D numeric array [groups, candidates], got shape {r.shape} "
            f"dtype {r.dtype}"
        )
    r = r.astype(np.float64)
    mask = np.ones(r.shape, bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != r.shape:
        raise ValueError(f"mask shape {mask.shape} != {name} shape {r.shape}")
    bad = mask & ~np.isfinite(r)
    if bad.any():
        g, n = np.argwhere(bad)[0]
        raise ValueError(
            f"{name}[{g}, {n}] = {r[g, n]} is not finite (prompt {g}, candidate {n}); "
            f"{int(bad.sum())} non-finite reward(s) in all"
        )
    return r, mask


def rejection_sample(
    rewards, *, num_accepted: int, beta: float, seed: int = 0, mask=None
) -> Accepted:
    """Statistical rejection sampling (RSO Algorithm 1), vectorised over G prompts.

    `rewards` [G, N] float: the reward of each of N candidates per prompt; `mask` [G, N] bool
    (None = all): which candidates exist.

    Each round, every still-pending candidate of group g is accepted independently with
    probability `exp((r - r_max_g) / beta)`, `r_max_g` the max over its pending candidates;
    accepted ones leave the pool, and within a round candidates are visited in column order,
    stopping once `num_accepted` are in (the paper's loop `break`). The max candidate is always
    accepted, so at most `num_accepted` rounds run. beta -> inf accepts the first M candidates
    (plain pi_sft samples); beta -> 0 accepts the top-M rewards (best-of-N).
    """
    r, mask = _check_rewards(rewards, mask)
    m = int(num_accepted)
    if isinstance(num_accepted, bool) or m != num_accepted or m < 1:
        raise ValueError(f"num_accepted must be an int >= 1, got {num_accepted!r}")
    if not (beta > 0):  # also rejects NaN; +inf is allowed (accept everything)
        raise ValueError(f"beta must be > 0 (inf allowed), got {beta!r}")
    have = mask.sum(1)
    short = np.flatnonzero(have < m)
    if short.size:
        raise ValueError(
            f"num_accepted={m} exceeds the {int(have[short[0]])} candidate(s) of prompt "
            f"{int(short[0])} ({short.size} prompt(s) have fewer than {m})"
        )
    g_count, _ = r.shape
    rng = np.random.default_rng(seed)
    pending = mask.copy()
    index = np.full((g_count, m), -1, np.int64)
    count = np.zeros(g_count, np.int64)
    rounds = np.zeros(g_count, np.int64)
    first_rate = None
    while (count < m).any():
        active = count < m
        r_max = np.max(np.where(pending, r, -np.inf), axis=1, keepdims=True)
        r_max = np.where(np.isfinite(r_max), r_max, 0.0)  # a finished group has an empty pool
        gap = np.where(pending, r, r_max) - r_max  # <= 0; 0 off the pool (masked by `pending`)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_accept = np.where(gap == 0, 0.0, gap / beta)  # beta = inf: 0; tiny beta: -inf
        u = rng.random(r.shape)
        acc = pending & active[:, None] & (u < np.exp(log_accept))
        if first_rate is None:
            first_rate = float(np.mean(acc.sum(1) / np.maximum(have, 1)))
        csum = np.cumsum(acc, axis=1)
        acc &= csum <= (m - count)[:, None]
        gi, ni = np.nonzero(acc)
        index[gi, count[gi] + csum[gi, ni] - 1] = ni
        count += acc.sum(1)
        pending &= ~acc
        rounds += active
    return Accepted(index=index, rounds=rounds, first_round_rate=float(first_rate or 0.0))


def target_distribution(pi_sft, rewards, beta: float) -> np.ndarray:
    """`pi_sft * exp(r / beta)` normalised (log-space), the distribution RSO samples from;
    `pi_sft` and `rewards` [A] over the same A actions."""
    logits = np.log(np.asarray(pi_sft, np.float64)) + np.asarray(rewards, np.float64) / beta
    p = np.exp(logits - logits.max())
    return p / p.sum()


# ----------------------------------------------------------------------------- config checks
