"""Offline pairwise preference losses against a frozen reference (DPO and its relatives).

Each loss is its math on a validated `Pair` (see `_pairs.preference_loss`). The registered
functions are keyword-only and take sequence log-probs summed over response tokens, shape [B]:
`policy_chosen_logps` (pc), `policy_rejected_logps` (pr), `ref_chosen_logps` (rc),
`ref_rejected_logps` (rr), optional response token counts `chosen_lengths`,
`rejected_lengths` (Lc, Lr), `beta` (b) and `label_smoothing` (ls). With `cl = pc - rc`,
`rl = pr - rr`, `h = cl - rl`, each returns `(mean over the batch of the per-example loss,
metrics)`; see `_pairs.metrics` for the metric keys. All math is float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from alignment.losses import _checks
from alignment.losses._pairs import Pair, preference_loss, smoothed_logistic

Array = Any


@preference_loss("dpo", label_smoothing="[0, 0.5]")
def dpo(p: Pair, *, beta: float = 0.1, label_smoothing: float = 0.0):
    """DPO (Rafailov et al., 2023): `-(1-ls)*logsig(b*h) - ls*logsig(-b*h)`.

    `label_smoothing` in [0, 0.5] gives conservative DPO (cDPO, Mitchell 2023); 0 is plain DPO.
    """
    return smoothed_logistic(beta * p.h, label_smoothing)


@preference_loss("ipo", lengths=lambda knobs: knobs["length_normalize"])
def ipo(p: Pair, *, beta: float = 0.1, length_normalize: bool = True):
    """IPO (Azar et al., 2023): `(h' - 1/(2b))**2`.

    `length_normalize=True` (TRL's form, the default) uses `h' = cl/Lc - rl/Lr`; False uses the
    paper's summed `h' = cl - rl` (as the DPO authors' code does).
    """
    h = p.cl / p.lc - p.rl / p.lr if length_normalize else p.h
    return (h - 1.0 / (2.0 * beta)) ** 2


@preference_loss("hinge")
def hinge(p: Pair, *, beta: float = 0.1):
    """RSO's hinge-norm loss (Liu et al., 2023, "Statistical Rejection Sampling"): `relu(1 - b*h)`.

    RSO uses this b (gamma = 0.05 in the paper) separately from its sampling beta.
    """
    return jax.nn.relu(1.0 - beta * p.h)


@preference_loss("slic", reference=False)
def slic(
    p: Pair,
    *,
    beta: float = 0.1,
    delta: float = 1.0,
    lam: float = 0.1,
    target_logps: Array | None = None,
):
    """SLiC-HF (Zhao et al., 2023): `relu(delta - (pc - pr)) - lam * log p(y_ref)`.

    Reference-free (reference log-probs, if given, only feed the reward metrics). `y_ref` is
    the SFT target when `target_logps` ([B], summed) is given, else the chosen response.
    `lam` = 0.1 is our default, not a value from the paper; tune it in the config.
    """
    _checks.check_scalar("delta", delta, low=0.0)
    _checks.check_scalar("lam", lam, low=0.0)
    if target_logps is None:
        target = p.pc
    else:
        target = _checks.f32("target_logps", target_logps)
        _checks.check_same_shape(policy_chosen_logps=p.pc, target_logps=target)
        _checks.check_finite("target_logps", target_logps)
    rank = jax.nn.relu(delta - (p.pc - p.pr))
    return rank - lam * target, {"rank_loss": jnp.mean(rank), "nll": -jnp.mean(target)}


@preference_loss("sigmoid_norm", lengths=True, label_smoothing="[0, 0.5]")
def sigmoid_norm(p: Pair, *, beta: float = 0.1, label_smoothing: float = 0.0):
    """Length-normalised DPO, under TRL's name `sigmoid_norm` (SimPO's "DPO w/ LN", Meng et al.,
    2024; Tulu 3, Lambert et al., 2024, section 4.3): `-logsig(b*(cl/Lc - rl/Lr))`, ls as in DPO.
    Not RSO's "sigmoid-norm" (Liu et al., 2023), which normalises by the SFT policy rather than
    by length: that is `dpo` with the SFT policy as reference and RSO's gamma as `b`."""
    return smoothed_logistic(beta * (p.cl / p.lc - p.rl / p.lr), label_smoothing)


@preference_loss("robust", label_smoothing="[0, 0.5)")
def robust(p: Pair, *, beta: float = 0.1, label_smoothing: float = 0.0):
    """Robust DPO (Chowdhury et al., 2024), unbiased under label-flip rate ls in [0, 0.5):

    `((1-ls)*(-logsig(b*h)) + ls*logsig(-b*h)) / (1-2*ls)`.
    """
    z = beta * p.h
    return (
        (1.0 - label_smoothing) * -jax.nn.log_sigmoid(z) + label_smoothing * jax.nn.log_sigmoid(-z)
    ) / (1.0 - 2.0 * label_smoothing)


@preference_loss("exo_pair", label_smoothing="(0, 0.5]")
def exo_pair(p: Pair, *, beta: float = 0.1, label_smoothing: float = 1e-3):
    """EXO, pairwise (Ji et al., 2024): reverse KL from the model's to the smoothed label's
    preference distribution, with `s = sigmoid`:

    `s(bh)*(logsig(bh) - log(1-ls)) + s(-bh)*(logsig(-bh) - log ls)`; needs 0 < ls <= 0.5
    (the paper uses 1e-3).
    """
    z = beta * p.h
    ls = jnp.asarray(label_smoothing, jnp.float32)
    return jax.nn.sigmoid(z) * (jax.nn.log_sigmoid(z) - jnp.log1p(-ls)) + jax.nn.sigmoid(-z) * (
        jax.nn.log_sigmoid(-z) - jnp.log(ls)
    )


@preference_loss("nca_pair")
def nca_pair(p: Pair, *, beta: float = 0.1):
    """NCA, pairwise (Chen et al., 2024, "Noise Contrastive Alignment"):

    `-logsig(b*cl) - 0.5*logsig(-b*cl) - 0.5*logsig(-b*rl)`.
    """
    c, r = beta * p.cl, beta * p.rl
    return -jax.nn.log_sigmoid(c) - 0.5 * jax.nn.log_sigmoid(-c) - 0.5 * jax.nn.log_sigmoid(-r)


@preference_loss("bco_pair")
def bco_pair(p: Pair, *, beta: float = 0.1, reward_shift: Array = 0.0):
    """BCO, pairwise (Jung et al., 2024): `-logsig(b*cl - d) - logsig(-(b*rl - d))`.

    `d = reward_shift` is BCO's running mean of the rewards; the caller keeps that state and
    updates it from `metrics['reward_mean']` (d = 0 without a shift).
    """
    d = jax.lax.stop_gradient(_checks.f32("reward_shift", reward_shift))
    c, r = beta * p.cl, beta * p.rl
    losses = -jax.nn.log_sigmoid(c - d) - jax.nn.log_sigmoid(-(r - d))
    return losses, {"reward_mean": 0.5 * (jnp.mean(c) + jnp.mean(r))}


@preference_loss("sppo_hard")
def sppo_hard(p: Pair, *, beta: float = 0.1):
    """SPPO with hard win-probabilities (Wu et al., 2024): `(cl - 1/(2b))**2 + (rl + 1/(2b))**2`."""
    target = 1.0 / (2.0 * beta)
    return (p.cl - target) ** 2 + (p.rl + target) ** 2


@preference_loss("apo_zero")
def apo_zero(p: Pair, *, beta: float = 0.1):
    """APO-zero (D'Oosterlinck et al., 2024, "Anchored Preference Optimization"):

    `1 - s(b*cl) + s(b*rl)`: push chosen up and rejected down (chosen better than the model).
    """
    return 1.0 - jax.nn.sigmoid(beta * p.cl) + jax.nn.sigmoid(beta * p.rl)


@preference_loss("apo_down")
def apo_down(p: Pair, *, beta: float = 0.1):
    """APO-down (D'Oosterlinck et al., 2024): `s(b*cl) + 1 - s(b*h)`: both go down, rejected more
    (for when the model is better than the chosen answers)."""
    return jax.nn.sigmoid(beta * p.cl) + 1.0 - jax.nn.sigmoid(beta * p.h)


@preference_loss("discopop")
def discopop(p: Pair, *, beta: float = 0.1, tau: float = 0.05):
    """DiscoPOP / log-ratio modulated loss (Chris Lu et al., 2024), `z = b*h`, `m = s(z/tau)`:

    `(1-m)*(-logsig z) + m*exp(-z)`. `m*exp(-z)` is computed as `exp(logsig(z/tau) - z)`, which
    stays finite where `exp(-z)` alone would overflow (m is then ~0).
    """
    _checks.check_scalar("tau", tau, low=0.0, low_open=True)
    z = beta * p.h
    m = jax.nn.sigmoid(z / tau)
    return (1.0 - m) * -jax.nn.log_sigmoid(z) + jnp.exp(jax.nn.log_sigmoid(z / tau) - z)


@preference_loss("aot", label_smoothing="[0, 0.5]")
def aot(p: Pair, *, beta: float = 0.1, label_smoothing: float = 0.0):
    """AOT, paired (Melnyk et al., 2024, "Distributional Preference Alignment via Optimal
    Transport"): label-smoothed sigmoid on `b*(sort(pc-pr) - sort(rc-rr))` over the batch.

    Couples the batch: `losses[i]` belongs to the i-th order statistic, not to example i (the
    mean is still invariant to batch order). Under data parallelism sort over the global batch.
    """
    delta = jnp.sort(p.pc - p.pr) - jnp.sort(p.rc - p.rr)
    return smoothed_logistic(beta * delta, label_smoothing)


@preference_loss("aot_unpaired", label_smoothing="[0, 0.5]")
def aot_unpaired(p: Pair, *, beta: float = 0.1, label_smoothing: float = 0.0):
    """AOT, unpaired (Melnyk et al., 2024): label-smoothed sigmoid on `b*(sort(cl) - sort(rl))`.

    Chosen and rejected log-ratio distributions are matched by order statistics (first-order
    stochastic dominance); couples the batch like `aot`.
    """
    delta = jnp.sort(p.cl) - jnp.sort(p.rl)
    return smoothed_logistic(beta * delta, label_smoothing)
