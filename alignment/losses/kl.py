"""Per-token KL estimators of KL(pi || ref) from samples of pi (Schulman, "Approximating KL
Divergence", 2020). With `d = ref_logp - logp` at a token sampled from pi:

- k1 = -d = logp - ref_logp           unbiased, high variance, can be negative
- k2 = 0.5 * d**2                     biased, low variance, >= 0
- k3 = exp(d) - d - 1                 unbiased, low variance, >= 0 (GRPO's choice)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logps: jax.Array, ref_logps: jax.Array, estimator: str) -> jax.Array:
    """Elementwise KL estimate (same shape as the inputs), float32."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"`kl_estimator` must be one of {ESTIMATORS}, got {estimator!r}")
    d = jnp.asarray(ref_logps, jnp.float32) - jnp.asarray(logps, jnp.float32)
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d**2
    return jnp.expm1(d) - d
