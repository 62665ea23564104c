"""Offline pairwise preference losses against a frozen reference (DPO and its relatives).

Every function is keyword-only and takes sequence log-probs summed over response tokens,
shape [B]: `policy_chosen_logps` (pc), `policy_rejected_logps` (pr),
`reference_chosen_logps` (rc), `reference_rejected_logps` (rr), optional response token
counts `chosen_lengths`, `rejected_lengths` (Lc, Lr), `beta` (b) and `label_smoothing` (ls).
With `cl = pc - rc`, `rl = pr - rr`, `h = cl - rl`, each returns `(mean over the batch of the
per-example loss, metrics)`; see `_pairs.metrics` for the metric keys. All math is float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from alignment.losses import _checks
from alignment.losses import _pairs
from alignment.losses._registry import register

Array = Any


def _inputs(loss, kw, *, need_reference=True, need_lengths=False):
  return _pairs.pair_inputs(loss, need_reference=need_reference, need_lengths=need_lengths, **kw)


def _kw(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
        reference_rejected_logps, chosen_lengths, rejected_lengths):
  return dict(policy_chosen_logps=policy_chosen_logps,
              policy_rejected_logps=policy_rejected_logps,
              reference_chosen_logps=reference_chosen_logps,
              reference_rejected_logps=reference_rejected_logps,
              chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)


def _finish(losses, p, beta, **extra):
  return jnp.mean(losses), _pairs.metrics(losses, p, beta, **extra)


@register("dpo", "preference")
def dpo(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
        reference_chosen_logps: Array, reference_rejected_logps: Array,
        chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
        beta: float = 0.1, label_smoothing: float = 0.0):
  """DPO (Rafailov et al., 2023): `-(1-ls)*logsig(b*h) - ls*logsig(-b*h)`.

  `label_smoothing` in [0, 0.5] gives conservative DPO (cDPO, Mitchell 2023); 0 is plain DPO.
  """
  _pairs.check_beta("dpo", beta)
  _pairs.check_label_smoothing("dpo", label_smoothing)
  p = _inputs("dpo", _kw(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                         reference_rejected_logps, chosen_lengths, rejected_lengths))
  losses = _pairs.smoothed_logistic(beta * (p.cl - p.rl), label_smoothing)
  return _finish(losses, p, beta)


@register("ipo", "preference")
def ipo(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
        reference_chosen_logps: Array, reference_rejected_logps: Array,
        chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
        beta: float = 0.1, label_smoothing: float = 0.0, length_normalize: bool = True):
  """IPO (Azar et al., 2023): `(h' - 1/(2b))**2`.

  `length_normalize=True` (TRL's form, the default) uses `h' = cl/Lc - rl/Lr`; False uses the
  paper's summed `h' = cl - rl` (as the DPO authors' code does).
  """
  _pairs.check_beta("ipo", beta)
  _pairs.no_label_smoothing("ipo", label_smoothing)
  p = _inputs("ipo", _kw(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                         reference_rejected_logps, chosen_lengths, rejected_lengths),
              need_lengths=length_normalize)
  if length_normalize:
    h = p.cl / p.lc - p.rl / p.lr
  else:
    h = p.cl - p.rl
  losses = (h - 1.0 / (2.0 * beta)) ** 2
  return _finish(losses, p, beta)


@register("hinge", "preference")
def hinge(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
          reference_chosen_logps: Array, reference_rejected_logps: Array,
          chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
          beta: float = 0.1, label_smoothing: float = 0.0):
  """RSO's hinge-norm loss (Liu et al., 2023, "Statistical Rejection Sampling"): `relu(1 - b*h)`.

  RSO uses this b (gamma = 0.05 in the paper) separately from its sampling beta.
  """
  _pairs.check_beta("hinge", beta)
  _pairs.no_label_smoothing("hinge", label_smoothing)
  p = _inputs("hinge", _kw(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                           reference_rejected_logps, chosen_lengths, rejected_lengths))
  losses = jax.nn.relu(1.0 - beta * (p.cl - p.rl))
  return _finish(losses, p, beta)


@register("slic", "preference")
def slic(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
         reference_chosen_logps: Array | None = None,
         reference_rejected_logps: Array | None = None,
         chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
         beta: float = 0.1, label_smoothing: float = 0.0, delta: float = 1.0,
         lam: float = 0.1, target_logps: Array | None = None):
  """SLiC-HF (Zhao et al., 2023): `relu(delta - (pc - pr)) - lam * log p(y_ref)`.

  Reference-free (reference log-probs, if given, only feed the reward metrics). `y_ref` is
  the SFT target when `target_logps` ([B], summed) is given, else the chosen response.
  `lam` = 0.1 is our default, not a value from the paper; tune it in the config.
  """
  _pairs.check_beta("slic", beta)
  _pairs.no_label_smoothing("slic", label_smoothing)
  _checks.check_scalar("delta", delta, low=0.0)
  _checks.check_scalar("lam", lam, low=0.0)
  p = _inputs("slic", _kw(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                          reference_rejected_logps, chosen_lengths, rejected_lengths),
              need_reference=False)
  if target_logps is None:
    target = p.pc
  else:
    target = _checks.f32("target_logps", target_logps)
    _checks.check_same_shape(policy_chosen_logps=p.pc, target_logps=target)
    _checks.check_finite("target_logps", target_logps)
  rank = jax.nn.relu(delta - (p.pc - p.pr))
  losses = rank - lam * target
  return _finish(losses, p, beta, rank_loss=jnp.mean(rank), nll=-jnp.mean(target))


@register("sigmoid_norm", "preference")
def sigmoid_norm(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
                 reference_chosen_logps: Array, reference_rejected_logps: Array,
                 chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
                 beta: float = 0.1, label_smoothing: float = 0.0):
  """Length-normalised DPO (RSO's sigmoid-norm): `-logsig(b*(cl/Lc - rl/Lr))`, ls as in DPO."""
  _pairs.check_beta("sigmoid_norm", beta)
  _pairs.check_label_smoothing("sigmoid_norm", label_smoothing)
  p = _inputs("sigmoid_norm",
              _kw(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                  reference_rejected_logps, chosen_lengths, rejected_lengths),
              need_lengths=True)
  losses = _pairs.smoothed_logistic(beta * (p.cl / p.lc - p.rl / p.lr), label_smoothing)
  return _finish(losses, p, beta)


@register("robust", "preference")
def robust(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
           reference_chosen_logps: Array, reference_rejected_logps: Array,
           chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
           beta: float = 0.1, label_smoothing: float = 0.0):
  """Robust DPO (Chowdhury et al., 2024), unbiased under label-flip rate ls in [0, 0.5):

  `((1-ls)*(-logsig(b*h)) + ls*logsig(-b*h)) / (1-2*ls)`.
  """
  _pairs.check_beta("robust", beta)
  _pairs.check_label_smoothing("robust", label_smoothing, high_open=True)
  p = _inputs("robust", _kw(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                            reference_rejected_logps, chosen_lengths, rejected_lengths))
  z = beta * (p.cl - p.rl)
  losses = ((1.0 - label_smoothing) * -jax.nn.log_sigmoid(z)
            + label_smoothing * jax.nn.log_sigmoid(-z)) / (1.0 - 2.0 * label_smoothing)
  return _finish(losses, p, beta)


@register("exo_pair", "preference")
def exo_pair(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
             reference_chosen_logps: Array, reference_rejected_logps: Array,
             chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
             beta: float = 0.1, label_smoothing: float = 1e-3):
  """EXO, pairwise (Ji et al., 2024): reverse KL from the model's to the smoothed label's
  preference distribution, with `s = sigmoid`:

  `s(bh)*(logsig(bh) - log(1-ls)) + s(-bh)*(logsig(-bh) - log ls)`; needs 0 < ls <= 0.5
  (the paper uses 1e-3).
  """
  _pairs.check_beta("exo_pair", beta)
  _pairs.check_label_smoothing("exo_pair", label_smoothing, low_open=True)
  p = _inputs("exo_pair",
              _kw(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                  reference_rejected_logps, chosen_lengths, rejected_lengths))
  z = beta * (p.cl - p.rl)
  ls = jnp.asarray(label_smoothing, jnp.float32)
  losses = (jax.nn.sigmoid(z) * (jax.nn.log_sigmoid(z) - jnp.log1p(-ls))
            + jax.nn.sigmoid(-z) * (jax.nn.log_sigmoid(-z) - jnp.log(ls)))
  return _finish(losses, p, beta)


@register("nca_pair", "preference")
def nca_pair(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
             reference_chosen_logps: Array, reference_rejected_logps: Array,
             chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
             beta: float = 0.1, label_smoothing: float = 0.0):
  """NCA, pairwise (Chen et al., 2024, "Noise Contrastive Alignment"):

  `-logsig(b*cl) - 0.5*logsig(-b*cl) - 0.5*logsig(-b*rl)`.
  """
  _pairs.check_beta("nca_pair", beta)
  _pairs.no_label_smoothing("nca_pair", label_smoothing)
  p = _inputs("nca_pair",
              _kw(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                  reference_rejected_logps, chosen_lengths, rejected_lengths))
  c, r = beta * p.cl, beta * p.rl
  losses = (-jax.nn.log_sigmoid(c) - 0.5 * jax.nn.log_sigmoid(-c)
            - 0.5 * jax.nn.log_sigmoid(-r))
  return _finish(losses, p, beta)


@register("bco_pair", "preference")
def bco_pair(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
             reference_chosen_logps: Array, reference_rejected_logps: Array,
             chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
             beta: float = 0.1, label_smoothing: float = 0.0, reward_shift: Array = 0.0):
  """BCO, pairwise (Jung et al., 2024): `-logsig(b*cl - d) - logsig(-(b*rl - d))`.

  `d = reward_shift` is BCO's running mean of the rewards; the caller keeps that state and
  updates it from `metrics['reward_mean']` (d = 0 without a shift).
  """
  _pairs.check_beta("bco_pair", beta)
  _pairs.no_label_smoothing("bco_pair", label_smoothing)
  p = _inputs("bco_pair",
              _kw(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                  reference_rejected_logps, chosen_lengths, rejected_lengths))
  d = jax.lax.stop_gradient(_checks.f32("reward_shift", reward_shift))
  c, r = beta * p.cl, beta * p.rl
  losses = -jax.nn.log_sigmoid(c - d) - jax.nn.log_sigmoid(-(r - d))
  return _finish(losses, p, beta, reward_mean=0.5 * (jnp.mean(c) + jnp.mean(r)))


@register("sppo_hard", "preference")
def sppo_hard(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
              reference_chosen_logps: Array, reference_rejected_logps: Array,
              chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
              beta: float = 0.1, label_smoothing: float = 0.0):
  """SPPO with hard win-probabilities (Wu et al., 2024): `(cl - 1/(2b))**2 + (rl + 1/(2b))**2`."""
  _pairs.check_beta("sppo_hard", beta)
  _pairs.no_label_smoothing("sppo_hard", label_smoothing)
  p = _inputs("sppo_hard",
              _kw(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                  reference_rejected_logps, chosen_lengths, rejected_lengths))
  target = 1.0 / (2.0 * beta)
  losses = (p.cl - target) ** 2 + (p.rl + target) ** 2
  return _finish(losses, p, beta)


@register("apo_zero", "preference")
def apo_zero(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
             reference_chosen_logps: Array, reference_rejected_logps: Array,
             chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
             beta: float = 0.1, label_smoothing: float = 0.0):
  """APO-zero (D'Oosterlinck et al., 2024, "Anchored Preference Optimization"):

  `1 - s(b*cl) + s(b*rl)`: push chosen up and rejected down (chosen better than the model).
  """
  _pairs.check_beta("apo_zero", beta)
  _pairs.no_label_smoothing("apo_zero", label_smoothing)
  p = _inputs("apo_zero",
              _kw(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                  reference_rejected_logps, chosen_lengths, rejected_lengths))
  losses = 1.0 - jax.nn.sigmoid(beta * p.cl) + jax.nn.sigmoid(beta * p.rl)
  return _finish(losses, p, beta)


@register("apo_down", "preference")
def apo_down(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
             reference_chosen_logps: Array, reference_rejected_logps: Array,
             chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
             beta: float = 0.1, label_smoothing: float = 0.0):
  """APO-down (D'Oosterlinck et al., 2024): `s(b*cl) + 1 - s(b*h)`: both go down, rejected more
  (for when the model is better than the chosen answers)."""
  _pairs.check_beta("apo_down", beta)
  _pairs.no_label_smoothing("apo_down", label_smoothing)
  p = _inputs("apo_down",
              _kw(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                  reference_rejected_logps, chosen_lengths, rejected_lengths))
  losses = jax.nn.sigmoid(beta * p.cl) + 1.0 - jax.nn.sigmoid(beta * (p.cl - p.rl))
  return _finish(losses, p, beta)


@register("discopop", "preference")
def discopop(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
             reference_chosen_logps: Array, reference_rejected_logps: Array,
             chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
             beta: float = 0.1, label_smoothing: float = 0.0, tau: float = 0.05):
  """DiscoPOP / log-ratio modulated loss (Chris Lu et al., 2024), `z = b*h`, `m = s(z/tau)`:

  `(1-m)*(-logsig z) + m*exp(-z)`. `m*exp(-z)` is computed as `exp(logsig(z/tau) - z)`, which
  stays finite where `exp(-z)` alone would overflow (m is then ~0).
  """
  _pairs.check_beta("discopop", beta)
  _pairs.no_label_smoothing("discopop", label_smoothing)
  _checks.check_scalar("tau", tau, low=0.0, low_open=True)
  p = _inputs("discopop",
              _kw(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                  reference_rejected_logps, chosen_lengths, rejected_lengths))
  z = beta * (p.cl - p.rl)
  m = jax.nn.sigmoid(z / tau)
  losses = (1.0 - m) * -jax.nn.log_sigmoid(z) + jnp.exp(jax.nn.log_sigmoid(z / tau) - z)
  return _finish(losses, p, beta)


@register("aot", "preference")
def aot(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
        reference_chosen_logps: Array, reference_rejected_logps: Array,
        chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
        beta: float = 0.1, label_smoothing: float = 0.0):
  """AOT, paired (Melnyk et al., 2024, "Distributional Preference Alignment via Optimal
  Transport"): label-smoothed sigmoid on `b*(sort(pc-pr) - sort(rc-rr))` over the batch.

  Couples the batch: `losses[i]` belongs to the i-th order statistic, not to example i (the
  mean is still invariant to batch order). Under data parallelism sort over the global batch.
  """
  _pairs.check_beta("aot", beta)
  _pairs.check_label_smoothing("aot", label_smoothing)
  p = _inputs("aot", _kw(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                         reference_rejected_logps, chosen_lengths, rejected_lengths))
  delta = jnp.sort(p.pc - p.pr) - jnp.sort(p.rc - p.rr)
  losses = _pairs.smoothed_logistic(beta * delta, label_smoothing)
  return _finish(losses, p, beta)


@register("aot_unpaired", "preference")
def aot_unpaired(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
                 reference_chosen_logps: Array, reference_rejected_logps: Array,
                 chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
                 beta: float = 0.1, label_smoothing: float = 0.0):
  """AOT, unpaired (Melnyk et al., 2024): label-smoothed sigmoid on `b*(sort(cl) - sort(rl))`.

  Chosen and rejected log-ratio distributions are matched by order statistics (first-order
  stochastic dominance); couples the batch like `aot`.
  """
  _pairs.check_beta("aot_unpaired", beta)
  _pairs.check_label_smoothing("aot_unpaired", label_smoothing)
  p = _inputs("aot_unpaired",
              _kw(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                  reference_rejected_logps, chosen_lengths, rejected_lengths))
  delta = jnp.sort(p.cl) - jnp.sort(p.rl)
  losses = _pairs.smoothed_logistic(beta * delta, label_smoothing)
  return _finish(losses, p, beta)
