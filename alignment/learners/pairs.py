"""Preference pairs from per-sample rewards grouped by prompt (pure numpy).

Input is a `rewards` array [G, K]: G prompts (groups), K samples each, with an optional boolean
`mask` [G, K] for ragged groups (masked entries are never paired). Output is a `Pairs` of index
arrays: pair p prefers sample `chosen[p]` over `rejected[p]`, both column indices into row
`group[p]` (flat index `group * K + column`).

Strategies (`STRATEGIES`):
  best_vs_worst  one pair per group: argmax vs argmin (online DPO / SAIL, Xiong et al. 2023).
  random         disjoint random pairs: shuffle, pair neighbours (RSO "random", Liu et al. 2023:
                 8 accepted samples -> 4 pairs).
  tournament     single-elimination: shuffle, play neighbours, winners advance, an odd one out
                 gets a bye; every match is a pair (8 samples -> 4 + 2 + 1 = 7 pairs). RSO's
                 tournament ranking (Liu et al. 2023, Sec. 3.3).
  all_pairs      every unordered pair i < j (K(K-1)/2 per group).
`max_pairs_per_group` caps the pairs of a group: random and tournament keep their first ones
(disjoint pairs first), all_pairs a uniformly random subset.

Ties (equal rewards) never become pairs: they are skipped and counted in `num_ties`; in a
tournament a tied match sends a coin-flip winner on. `margin > 0` drops pairs whose reward gap
is below it (counted in `num_below_margin`). Ties among maxima/minima in best_vs_worst are
broken uniformly at random. Everything random draws from one `np.random.default_rng(seed)`,
so the output is a deterministic function of (rewards, mask, strategy, seed, ...).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

STRATEGIES = ("best_vs_worst", "random", "tournament", "all_pairs")


@dataclasses.dataclass(frozen=True)
class Pairs:
    """Pair p: sample (group[p], chosen[p]) beats (group[p], rejected[p]) by `margin[p]` >= 0."""

    group: np.ndarray  # [P] int64 row of rewards
    chosen: np.ndarray  # [P] int64 column of the preferred sample
    rejected: np.ndarray  # [P] int64 column of the other one
    margin: np.ndarray  # [P] float32 reward(chosen) - reward(rejected), > 0
    num_ties: int  # candidate pairs skipped because both rewards were equal
    num_below_margin: int  # candidate pairs dropped by the margin filter
    num_groups_without_pair: int

    def __len__(self) -> int:
        return int(self.group.shape[0])

    def flat(self, num_samples_per_group: int) -> tuple[np.ndarray, np.ndarray]:
        """(chosen, rejected) as flat indices `group * K + column` into `rewards.reshape(-1)`."""
        k = int(num_samples_per_group)
        return self.group * k + self.chosen, self.group * k + self.rejected

    def stats(self) -> dict[str, float]:
        return {
            "pairs": float(len(self)),
            "pair_ties": float(self.num_ties),
            "pair_below_margin": float(self.num_below_margin),
            "groups_without_pair": float(self.num_groups_without_pair),
            "pair_margin_mean": float(self.margin.mean()) if len(self) else 0.0,
        }


def _check(rewards, mask):
    rewards = np.asarray(rewards)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be 2-D [groups, samples], got shape {rewards.shape}")
    if not np.issubdtype(rewards.dtype, np.number) or np.issubdtype(
        rewards.dtype, np.complexfloating
    ):
        raise ValueError(f"rewards must be real numbers, got dtype {rewards.dtype}")
    rewards = rewards.astype(np.float64)
    if mask is None:
        mask = np.ones(rewards.shape, bool)
    else:
        mask = np.asarray(mask)
        if mask.shape != rewards.shape:
            raise ValueError(f"mask shape {mask.shape} != rewards shape {rewards.shape}")
        if mask.dtype != np.bool_:
            raise ValueError(f"mask must be boolean, got dtype {mask.dtype}")
    bad = ~np.isfinite(rewards) & mask
    if bad.any():
        g, k = np.argwhere(bad)[0]
        raise ValueError(
            f"rewards[{g}, {k}] = {rewards[g, k]} is not finite "
            f"({int(bad.sum())} non-finite rewards in all)"
        )
    return rewards, mask


def make_pairs(
    rewards,
    *,
    strategy: str,
    seed: int = 0,
    mask=None,
    margin: float = 0.0,
    max_pairs_per_group: Optional[int] = None,
) -> Pairs:
    """Builds (chosen, rejected) pairs inside each group from its `rewards` [G, K] (`mask` [G, K]
    bool, None = all: which samples exist); see the module doc."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown pairing strategy {strategy!r}; expected one of {STRATEGIES}")
    if not (np.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    if max_pairs_per_group is not None and int(max_pairs_per_group) < 1:
        raise ValueError(f"max_pairs_per_group must be >= 1 or None, got {max_pairs_per_group}")
    rewards, mask = _check(rewards, mask)
    rng = np.random.default_rng(seed)
    out_g, out_c, out_r = [], [], []
    ties = below = empty = 0

    def offer(g, a, b):
        """Labels the candidate pair (a, b) of group g; returns the winner (None on a tie)."""
        nonlocal ties, below
        ra, rb = rewards[g, a], rewards[g, b]
        if ra == rb:
            ties += 1
            return None
        c, r = (a, b) if ra > rb else (b, a)
        if rewards[g, c] - rewards[g, r] < margin:
            below += 1
        else:
            out_g.append(g), out_c.append(c), out_r.append(r)
        return c

    for g in range(rewards.shape[0]):
        idx = np.flatnonzero(mask[g])
        before = len(out_g)
        if strategy == "best_vs_worst":
            if idx.size >= 2:
                perm = rng.permutation(idx)  # uniform tie-breaking among equal maxima / minima
                vals = rewards[g, perm]
                offer(g, perm[np.argmax(vals)], perm[np.argmin(vals)])
        elif strategy == "random":
            perm = rng.permutation(idx)
            n = perm.size // 2
            if max_pairs_per_group is not None:
                n = min(n, int(max_pairs_per_group))
            for i in range(n):
                offer(g, perm[2 * i], perm[2 * i + 1])
        elif strategy == "tournament":
            alive = list(rng.permutation(idx))
            while len(alive) > 1:
                nxt = []
                for i in range(0, len(alive) - 1, 2):
                    w = offer(g, alive[i], alive[i + 1])
                    nxt.append(w if w is not None else alive[i + int(rng.integers(2))])
                if len(alive) % 2:
                    nxt.append(alive[-1])  # bye
                alive = nxt
        else:  # all_pairs
            for i in range(idx.size):
                for j in range(i + 1, idx.size):
                    offer(g, idx[i], idx[j])
        made = len(out_g) - before
        if strategy != "random" and max_pairs_per_group is not None and made > max_pairs_per_group:
            # tournament keeps its earliest rounds (disjoint pairs); all_pairs a random subset
            m = int(max_pairs_per_group)
            keep = before + (
                np.arange(m) if strategy == "tournament" else np.sort(rng.permutation(made)[:m])
            )
            for lst in (out_g, out_c, out_r):
                lst[before:] = [lst[i] for i in keep]
        empty += len(out_g) == before

    group = np.asarray(out_g, np.int64)
    chosen = np.asarray(out_c, np.int64)
    rejected = np.asarray(out_r, np.int64)
    gap = (rewards[group, chosen] - rewards[group, rejected]).astype(np.float32)
    return Pairs(
        group=group,
        chosen=chosen,
        rejected=rejected,
        margin=gap,
        num_ties=ties,
        num_below_margin=below,
        num_groups_without_pair=empty,
    )


def best_worst_rows(prompts, texts, scores, *, samples_per_prompt: int, min_margin: float):
    """Per prompt, the highest- vs the lowest-scoring of its `samples_per_prompt` consecutive
    samples (non-empty ones only), kept when the scores differ by >= `min_margin` and the texts
    differ. Returns (rows of prompt/chosen/rejected/chosen_reward/rejected_reward, dropped count)."""
    k = samples_per_prompt
    if len(texts) != len(prompts) * k or len(scores) != len(texts):
        raise ValueError(
            f"best_worst_rows: {len(prompts)} prompts x {k} samples != {len(texts)} texts / "
            f"{len(scores)} scores"
        )
    rows, dropped = [], 0
    for i, prompt in enumerate(prompts):
        r, t = np.asarray(scores[i * k : (i + 1) * k], np.float64), texts[i * k : (i + 1) * k]
        ok = [j for j in range(k) if t[j].strip()]
        best = max(ok, key=lambda j: r[j]) if len(ok) > 1 else None
        worst = min(ok, key=lambda j: r[j]) if len(ok) > 1 else None
        if best is None or r[best] - r[worst] < min_margin or t[best] == t[worst]:
            dropped += 1
            continue
        rows.append(
            {
                "prompt": prompt,
                "chosen": t[best],
                "rejected": t[worst],
                "chosen_reward": float(r[best]),
                "rejected_reward": float(r[worst]),
            }
        )
    return rows, dropped
