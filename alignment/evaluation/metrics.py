"""Evaluation statistics as pure numpy functions of scores: no model, no task, no sampling.

Each function checks its input and raises a ValueError naming the argument on bad shapes or
non-finite values, so a NaN reward or log-prob never turns into a quiet number in a report.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def _finite(name: str, x, ndim: tuple[int, ...] = (1,)) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim not in ndim:
        raise ValueError(f"{name} must have ndim in {ndim}, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: nothing to evaluate")
    bad = np.flatnonzero(~np.isfinite(arr.reshape(-1)))
    if bad.size:
        raise ValueError(
            f"{name} holds {bad.size} non-finite value(s), first at flat index "
            f"{int(bad[0])}: {arr.reshape(-1)[bad[0]]}"
        )
    return arr


def mean_stderr(values) -> tuple[float, float]:
    """(mean, standard error of the mean) of a 1-D sample; stderr is 0 for a single value."""
    x = _finite("values", values, (1,))
    if x.size == 1:
        return float(x[0]), 0.0
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))


def kl_from_samples(policy_logps, ref_logps) -> float:
    """Monte-Carlo sequence KL(pi || ref) = E_{y ~ pi(.|x)} [log pi(y|x) - log ref(y|x)].

    Both arguments are [N] sums of per-token log-probs of the same N samples y drawn from the
    policy at temperature 1 (the k1 estimator of Schulman, "Approximating KL divergence", 2020:
    unbiased, can be negative on a finite sample). Identical log-probs give exactly 0.
    """
    pi = _finite("policy_logps", policy_logps)
    ref = _finite("ref_logps", ref_logps)
    if pi.shape != ref.shape:
        raise ValueError(f"policy_logps shape {pi.shape} != ref_logps shape {ref.shape}")
    return float(np.mean(pi - ref))


def _per_prompt(name: str, x) -> np.ndarray:
    arr = _finite(name, x, (1, 2))
    return arr[:, None] if arr.ndim == 1 else arr


def win_rate(policy_rewards, reference_rewards) -> float:
    """P(r_pi > r_ref) + P(r_pi = r_ref) / 2 over policy and reference responses to the same prompts.

    Shapes: [N] and [N] pair sample i with sample i; [P, K] and [P, M] (K, M samples for each of
    P prompts) compare every policy sample with every reference sample of the same prompt (an
    unbiased, lower-variance estimate of the same probability). Ties count 1/2, so identical
    reward arrays give exactly 0.5.
    """
    pol = _per_prompt("policy_rewards", policy_rewards)
    ref = _per_prompt("reference_rewards", reference_rewards)
    if pol.shape[0] != ref.shape[0]:
        raise ValueError(
            f"win_rate: policy_rewards has {pol.shape[0]} prompts, reference_rewards {ref.shape[0]}"
        )
    diff_PxKxM = pol[:, :, None] - ref[:, None, :]
    score = (diff_PxKxM > 0) + 0.5 * (diff_PxKxM == 0)
    return float(score.mean())


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k).

    Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1, in the
    numerically stable product form 1 - prod_{i=n-c+1}^{n} (1 - k / i).
    """
    for name, v in (("n", n), ("c", c), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"pass_at_k: {name} must be an int, got {v!r}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mean_pass_at_k(correct, k: int) -> float:
    """pass@k averaged over P prompts, each with N verified samples.

    correct: bool [P, N], whether sample j of prompt i is correct.
    """
    correct_PxN = np.asarray(correct)
    if correct_PxN.ndim != 2 or correct_PxN.size == 0:
        raise ValueError(
            f"mean_pass_at_k: correct must be a non-empty [P, N] array, got shape "
            f"{correct_PxN.shape}"
        )
    if correct_PxN.dtype != bool:
        raise TypeError(f"mean_pass_at_k: correct must be bool, got {correct_PxN.dtype}")
    n = correct_PxN.shape[1]
    return float(np.mean([pass_at_k(n, int(c), k) for c in correct_PxN.sum(axis=1)]))


def default_ks(n: int) -> list[int]:
    """k = 1, 2, 4, ... up to n, plus n itself: the pass@k columns worth reporting for n samples."""
    if n < 1:
        raise ValueError(f"default_ks: need at least one sample per prompt, got {n}")
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else ks + [n]


def ranking_accuracy(chosen_scores, rejected_scores) -> float:
    """Fraction of held-out pairs whose chosen response scores above the rejected one (ties 1/2).

    With scores the implicit reward log pi(y|x) - log ref(y|x) this is the "reward accuracy" of
    DPO (Rafailov et al. 2023); ties count 1/2 so a policy equal to its reference scores 0.5.
    """
    chosen = _finite("chosen_scores", chosen_scores)
    rejected = _finite("rejected_scores", rejected_scores)
    if chosen.shape != rejected.shape:
        raise ValueError(
            f"ranking_accuracy: chosen_scores shape {chosen.shape} != rejected_scores "
            f"shape {rejected.shape}"
        )
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))


def gold_ranked_pairs(rewards) -> list[tuple[int, int, int]]:
    """(prompt, better sample, worse sample) for every pair of samples of a prompt whose gold
    rewards differ: preference pairs labelled by the gold reward.

    rewards: float [P, K], the gold reward of sample k of prompt p.
    """
    r = _finite("rewards", rewards, (2,))
    out = []
    for p in range(r.shape[0]):
        for i in range(r.shape[1]):
            for j in range(i + 1, r.shape[1]):
                if r[p, i] != r[p, j]:
                    out.append((p, i, j) if r[p, i] > r[p, j] else (p, j, i))
    return out


def summarize(values: Sequence[float]) -> dict[str, float]:
    """{"mean", "stderr"} of a 1-D sample (for JSON reports)."""
    mean, stderr = mean_stderr(values)
    return {"mean": mean, "stderr": stderr}
