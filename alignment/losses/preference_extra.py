"""Preference losses with an extra ingredient: an NLL anchor (rpo, cpo, orpo, asft), no
reference (simpo, orpo, cpo, asft), unpaired data (kto), a second frozen model (inpo) or an
online score-function term (sail). Inputs and metrics as in `preference.py`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from alignment.losses import _checks
from alignment.losses import _pairs
from alignment.losses._registry import register

Array = Any
sg = jax.lax.stop_gradient


def _kw(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
        reference_rejected_logps, chosen_lengths, rejected_lengths):
  return dict(policy_chosen_logps=policy_chosen_logps,
              policy_rejected_logps=policy_rejected_logps,
              reference_chosen_logps=reference_chosen_logps,
              reference_rejected_logps=reference_rejected_logps,
              chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)


def _log_odds(mean_logp: jax.Array) -> jax.Array:
  """`log(p/(1-p))` from `a = log p`: `a - log(1 - exp a)`, with `log(-expm1(a))` for accuracy.

  `a` is capped at -1e-7 so a response of probability exactly 1 gives a large finite log-odds
  instead of +inf.
  """
  a = jnp.minimum(mean_logp, -1e-7)
  return a - jnp.log(-jnp.expm1(a))


@register("rpo", "preference")
def rpo(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
        reference_chosen_logps: Array, reference_rejected_logps: Array,
        chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
        beta: float = 0.1, label_smoothing: float = 0.0, variant: str = "cumulative",
        eta: float | None = None):
  """RPO (Liu et al., 2024, "Provably Mitigating Overoptimization in RLHF"): DPO plus an SFT
  anchor on the chosen response.

  `cumulative`: `dpo - eta*b*pc` (the paper's form, eta = 0.005 with b in {0.01, 0.05}).
  `average`:    `dpo + eta * (-pc/Lc)`, a mean-token NLL (TRL's `rpo_alpha`, commonly 1.0).
  `eta=None` takes 0.005 for `cumulative` and 1.0 for `average`.
  """
  _checks.check_choice("variant", variant, ("cumulative", "average"))
  eta = (0.005 if variant == "cumulative" else 1.0) if eta is None else eta
  _checks.check_scalar("eta", eta, low=0.0)
  _pairs.check_beta("rpo", beta)
  _pairs.check_label_smoothing("rpo", label_smoothing)
  p = _pairs.pair_inputs("rpo", need_reference=True, need_lengths=variant == "average",
                         **_kw(policy_chosen_logps, policy_rejected_logps,
                               reference_chosen_logps, reference_rejected_logps,
                               chosen_lengths, rejected_lengths))
  pref = _pairs.smoothed_logistic(beta * (p.cl - p.rl), label_smoothing)
  if variant == "cumulative":
    anchor = -eta * beta * p.pc
  else:
    anchor = eta * (-p.pc / p.lc)
  losses = pref + anchor
  return jnp.mean(losses), _pairs.metrics(losses, p, beta, preference_loss=jnp.mean(pref),
                                          anchor_loss=jnp.mean(anchor))


@register("simpo", "preference")
def simpo(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
          reference_chosen_logps: Array | None = None,
          reference_rejected_logps: Array | None = None,
          chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
          beta: float = 2.0, label_smoothing: float = 0.0, gamma: float = 0.5):
  """SimPO (Meng et al., 2024), reference-free: `-logsig(b*(pc/Lc - pr/Lr) - gamma)`.

  Paper ranges: b ~ 2-2.5, gamma ~ 0.5 (here gamma is the margin itself, not gamma/b);
  `label_smoothing` as in cDPO.
  """
  _pairs.check_beta("simpo", beta)
  _pairs.check_label_smoothing("simpo", label_smoothing)
  _checks.check_scalar("gamma", gamma)
  p = _pairs.pair_inputs("simpo", need_reference=False, need_lengths=True,
                         **_kw(policy_chosen_logps, policy_rejected_logps,
                               reference_chosen_logps, reference_rejected_logps,
                               chosen_lengths, rejected_lengths))
  z = beta * (p.pc / p.lc - p.pr / p.lr) - gamma
  losses = _pairs.smoothed_logistic(z, label_smoothing)
  return jnp.mean(losses), _pairs.metrics(losses, p, beta)


@register("orpo", "preference")
def orpo(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
         reference_chosen_logps: Array | None = None,
         reference_rejected_logps: Array | None = None,
         chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
         beta: float = 0.1, label_smoothing: float = 0.0):
  """ORPO (Hong et al., 2024), reference-free:

  `-pc/Lc - b*logsig(logodds(pc/Lc) - logodds(pr/Lr))`, `logodds(a) = a - log(1 - exp a)`.
  `beta` plays the paper's lambda (as in TRL).
  """
  _pairs.check_beta("orpo", beta)
  _pairs.no_label_smoothing("orpo", label_smoothing)
  p = _pairs.pair_inputs("orpo", need_reference=False, need_lengths=True,
                         **_kw(policy_chosen_logps, policy_rejected_logps,
                               reference_chosen_logps, reference_rejected_logps,
                               chosen_lengths, rejected_lengths))
  _checks.check_nonpositive("policy_chosen_logps", policy_chosen_logps)
  _checks.check_nonpositive("policy_rejected_logps", policy_rejected_logps)
  nll = -p.pc / p.lc
  ratio = jax.nn.log_sigmoid(_log_odds(p.pc / p.lc) - _log_odds(p.pr / p.lr))
  losses = nll - beta * ratio
  return jnp.mean(losses), _pairs.metrics(losses, p, beta, nll=jnp.mean(nll),
                                          log_odds_ratio=jnp.mean(ratio))


@register("cpo", "preference")
def cpo(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
        reference_chosen_logps: Array | None = None,
        reference_rejected_logps: Array | None = None,
        chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
        beta: float = 0.1, label_smoothing: float = 0.0, nll_weight: float = 1.0):
  """CPO (Xu et al., 2024), reference-free: `-logsig(b*(pc - pr)) + nll_weight * (-pc/Lc)`.

  The NLL is the mean-token NLL of the chosen response; `label_smoothing` as in cDPO.
  """
  _pairs.check_beta("cpo", beta)
  _pairs.check_label_smoothing("cpo", label_smoothing)
  _checks.check_scalar("nll_weight", nll_weight, low=0.0)
  p = _pairs.pair_inputs("cpo", need_reference=False, need_lengths=True,
                         **_kw(policy_chosen_logps, policy_rejected_logps,
                               reference_chosen_logps, reference_rejected_logps,
                               chosen_lengths, rejected_lengths))
  nll = -p.pc / p.lc
  losses = _pairs.smoothed_logistic(beta * (p.pc - p.pr), label_smoothing) + nll_weight * nll
  return jnp.mean(losses), _pairs.metrics(losses, p, beta, nll=jnp.mean(nll))


@register("kto", "preference")
def kto(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
        reference_chosen_logps: Array, reference_rejected_logps: Array,
        chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
        beta: float = 0.1, label_smoothing: float = 0.0,
        policy_kl_logps: Array | None = None, reference_kl_logps: Array | None = None,
        kl: Array | None = None, desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0):
  """KTO (Ethayarajh et al., 2024), unpaired: chosen = desirable [Bd], rejected = undesirable
  [Bu]; Bd and Bu may differ.

  desirable `1 - s(b*(cl - z0))`, undesirable `1 - s(b*(z0 - rl))`, weighted by lambda_D /
  lambda_U, averaged over all Bd + Bu examples. `z0 = max(0, mean(policy_kl_logps -
  reference_kl_logps))` (stop-gradient) from mismatched (x, y') pairs; or pass `kl` directly
  (e.g. 0.0 to drop it, as in APO-unpaired). One of the two is required.
  `losses` is [Bd + Bu]; `reward_margin` is per example when Bd == Bu, else the difference of
  the mean rewards.
  """
  _pairs.check_beta("kto", beta)
  _pairs.no_label_smoothing("kto", label_smoothing)
  _checks.check_scalar("desirable_weight", desirable_weight, low=0.0)
  _checks.check_scalar("undesirable_weight", undesirable_weight, low=0.0)
  p = _pairs.pair_inputs("kto", need_reference=True, need_lengths=False, paired=False,
                         **_kw(policy_chosen_logps, policy_rejected_logps,
                               reference_chosen_logps, reference_rejected_logps,
                               chosen_lengths, rejected_lengths))
  if p.pc.shape[0] == 0 or p.pr.shape[0] == 0:
    raise ValueError("loss 'kto': needs at least one desirable (chosen) and one undesirable "
                     f"(rejected) example, got {p.pc.shape[0]} and {p.pr.shape[0]}")
  if policy_kl_logps is not None or reference_kl_logps is not None:
    if kl is not None:
      raise ValueError("loss 'kto': pass either `kl` or the KL log-probs, not both")
    pk = _checks.f32("policy_kl_logps", policy_kl_logps)
    rk = _checks.f32("reference_kl_logps", reference_kl_logps)
    _checks.check_same_shape(policy_kl_logps=pk, reference_kl_logps=rk)
    _checks.check_finite("policy_kl_logps", policy_kl_logps)
    _checks.check_finite("reference_kl_logps", reference_kl_logps)
    z0 = jnp.maximum(jnp.mean(pk - rk), 0.0)
  elif kl is not None:
    _checks.check_finite("kl", kl)
    z0 = jnp.maximum(_checks.f32("kl", kl), 0.0)
  else:
    raise ValueError("loss 'kto': needs the reference point z0: pass `policy_kl_logps` and "
                     "`reference_kl_logps` (log-probs of mismatched (x, y') pairs) or `kl`")
  z0 = sg(z0)
  chosen_losses = 1.0 - jax.nn.sigmoid(beta * (p.cl - z0))
  rejected_losses = 1.0 - jax.nn.sigmoid(beta * (z0 - p.rl))
  losses = jnp.concatenate([desirable_weight * chosen_losses,
                            undesirable_weight * rejected_losses])
  cr, rr = beta * p.cl, beta * p.rl
  if cr.shape == rr.shape:
    margin = cr - rr
    accuracy = jnp.mean((cr > rr).astype(jnp.float32))
  else:
    margin = jnp.mean(cr) - jnp.mean(rr)
    accuracy = jnp.mean((cr[:, None] > rr[None, :]).astype(jnp.float32))
  metrics = {
      "losses": losses, "chosen_rewards": cr, "rejected_rewards": rr, "reward_margin": margin,
      "reward_accuracy": accuracy, "kl": z0, "logps_chosen": jnp.mean(p.pc),
      "logps_rejected": jnp.mean(p.pr),
  }
  return jnp.mean(losses), metrics


@register("asft", "preference")
def asft(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
         reference_chosen_logps: Array | None = None,
         reference_rejected_logps: Array | None = None,
         chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
         beta: float = 0.1, label_smoothing: float = 0.0, lam: float = 1.0):
  """ASFT (Wang et al., 2024, "Aligned SFT through absolute likelihood"), reference-free:

  `-pc/Lc + lam*(-logsig(b*f_w) - logsig(-b*f_l))`, `f = logodds(mean-token log-prob)`.
  The exact f and the placement of b are *unverified* (methods.md); with b = 1 the bracket is
  `-log pbar_w - log(1 - pbar_l)` for the geometric-mean token probability pbar.
  """
  _pairs.check_beta("asft", beta)
  _pairs.no_label_smoothing("asft", label_smoothing)
  _checks.check_scalar("lam", lam, low=0.0)
  p = _pairs.pair_inputs("asft", need_reference=False, need_lengths=True,
                         **_kw(policy_chosen_logps, policy_rejected_logps,
                               reference_chosen_logps, reference_rejected_logps,
                               chosen_lengths, rejected_lengths))
  _checks.check_nonpositive("policy_chosen_logps", policy_chosen_logps)
  _checks.check_nonpositive("policy_rejected_logps", policy_rejected_logps)
  nll = -p.pc / p.lc
  fw, fl = _log_odds(p.pc / p.lc), _log_odds(p.pr / p.lr)
  absolute = -jax.nn.log_sigmoid(beta * fw) - jax.nn.log_sigmoid(-beta * fl)
  losses = nll + lam * absolute
  return jnp.mean(losses), _pairs.metrics(losses, p, beta, nll=jnp.mean(nll),
                                          absolute_loss=jnp.mean(absolute))


@register("inpo", "preference")
def inpo(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
         reference_chosen_logps: Array, reference_rejected_logps: Array,
         chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
         beta: float = 0.1, label_smoothing: float = 0.0,
         previous_chosen_logps: Array | None = None,
         previous_rejected_logps: Array | None = None,
         eta: float | None = None, tau: float = 0.1):
  """INPO (Zhang et al., 2024, "Iterative Nash Policy Optimization"), squared loss against two
  frozen models, the reference and the previous iterate pi_t:

  `(log pi(yw)/pi(yl) - eta*tau*log ref(yw)/ref(yl) - (1-eta*tau)*log pi_t(yw)/pi_t(yl)
  - eta/2)**2`. Form reconstructed in methods.md, *unverified*. `eta=None` means `1/beta`,
  so at the first iteration (pi_t = reference, the default when `previous_*` are absent) the
  loss is exactly IPO with target 1/(2b). Needs `0 <= eta*tau <= 1`.
  """
  _pairs.check_beta("inpo", beta)
  _pairs.no_label_smoothing("inpo", label_smoothing)
  eta = 1.0 / beta if eta is None else eta
  _checks.check_scalar("eta", eta, low=0.0, low_open=True)
  _checks.check_scalar("tau", tau, low=0.0)
  _checks.check_scalar("eta*tau", eta * tau, low=0.0, high=1.0)
  p = _pairs.pair_inputs("inpo", need_reference=True, need_lengths=False,
                         **_kw(policy_chosen_logps, policy_rejected_logps,
                               reference_chosen_logps, reference_rejected_logps,
                               chosen_lengths, rejected_lengths))
  if (previous_chosen_logps is None) != (previous_rejected_logps is None):
    raise ValueError("loss 'inpo': pass both previous_chosen_logps and previous_rejected_logps "
                     "or neither")
  if previous_chosen_logps is None:
    tc, tr = p.rc, p.rr
  else:
    tc = _checks.f32("previous_chosen_logps", previous_chosen_logps)
    tr = _checks.f32("previous_rejected_logps", previous_rejected_logps)
    _checks.check_same_shape(policy_chosen_logps=p.pc, previous_chosen_logps=tc,
                             previous_rejected_logps=tr)
    _checks.check_finite("previous_chosen_logps", previous_chosen_logps)
    _checks.check_finite("previous_rejected_logps", previous_rejected_logps)
  w = eta * tau
  h = (p.pc - p.pr) - w * (p.rc - p.rr) - (1.0 - w) * (tc - tr)
  losses = (h - eta / 2.0) ** 2
  return jnp.mean(losses), _pairs.metrics(losses, p, beta)


@register("sail", "preference")
def sail(*, policy_chosen_logps: Array, policy_rejected_logps: Array,
         reference_chosen_logps: Array, reference_rejected_logps: Array,
         chosen_lengths: Array | None = None, rejected_lengths: Array | None = None,
         beta: float = 0.1, label_smoothing: float = 0.0, score_coef: float = 0.2,
         self_label_coef: float = 0.0, normalize_score_term: bool = False):
  """SAIL (Ding et al., 2024, "Self-Improving Online Alignment"), DPO on pairs sampled from the
  current policy, as a surrogate whose gradient adds the score-function term:

  `l = -logsig(b*h)`; `L = l + c * sg(l) * (pc + pr) - (rho/2) * logsig(b*h)**2`, i.e.
  methods.md's `-logsig(bh) - c*sg(logsig(bh))*(pc+pr)` (c = `score_coef`, authors' code:
  0.2 / 0.2 / 0.3 for DP / PP / PR), plus the self-labelling term with rho =
  `self_label_coef` (0 turns it off). With `label_smoothing` l is the cDPO loss.
  `normalize_score_term=True` divides each `log pi(y)` by its detached magnitude, as the
  authors' code does (we use |log pi| so the sign of the term is kept).
  """
  _pairs.check_beta("sail", beta)
  _pairs.check_label_smoothing("sail", label_smoothing)
  _checks.check_scalar("score_coef", score_coef)
  _checks.check_scalar("self_label_coef", self_label_coef)
  p = _pairs.pair_inputs("sail", need_reference=True, need_lengths=False,
                         **_kw(policy_chosen_logps, policy_rejected_logps,
                               reference_chosen_logps, reference_rejected_logps,
                               chosen_lengths, rejected_lengths))
  z = beta * (p.cl - p.rl)
  pref = _pairs.smoothed_logistic(z, label_smoothing)
  if normalize_score_term:
    score = (p.pc / sg(jnp.maximum(jnp.abs(p.pc), 1e-6))
             + p.pr / sg(jnp.maximum(jnp.abs(p.pr), 1e-6)))
  else:
    score = p.pc + p.pr
  score_term = score_coef * sg(pref) * score
  self_label = -0.5 * self_label_coef * jax.nn.log_sigmoid(z) ** 2
  losses = pref + score_term + self_label
  return jnp.mean(losses), _pairs.metrics(losses, p, beta, preference_loss=jnp.mean(pref))
