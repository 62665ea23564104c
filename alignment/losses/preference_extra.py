"""Preference losses with an extra ingredient: an NLL anchor (rpo, cpo, orpo, asft), no
reference (simpo, orpo, cpo, asft), unpaired data (kto), a second frozen model (inpo) or an
online score-function term (sail). Inputs and metrics as in `preference.py`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from alignment.losses import _checks
from alignment.losses._pairs import Pair, preference_loss, smoothed_logistic

Array = Any
sg = jax.lax.stop_gradient


def _log_odds(mean_logp: jax.Array) -> jax.Array:
    """`log(p/(1-p))` from `a = log p`: `a - log(1 - exp a)`, with `log(-expm1(a))` for accuracy.

    `a` is capped at -1e-7 so a response of probability exactly 1 gives a large finite log-odds
    instead of +inf.
    """
    a = jnp.minimum(mean_logp, -1e-7)
    return a - jnp.log(-jnp.expm1(a))


@preference_loss(
    "rpo", lengths=lambda knobs: knobs["variant"] == "average", label_smoothing="[0, 0.5]"
)
def rpo(
    p: Pair,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    variant: str = "cumulative",
    eta: float | None = None,
):
    """RPO (Liu et al., 2024, "Provably Mitigating Overoptimization in RLHF"): DPO plus an SFT
    anchor on the chosen response.

    `cumulative`: `dpo - eta*b*pc` (the paper's form, eta = 0.005 with b in {0.01, 0.05}).
    `average`:    `dpo + eta * (-pc/Lc)`, a mean-token NLL (TRL's `rpo_alpha`, commonly 1.0).
    `eta=None` takes 0.005 for `cumulative` and 1.0 for `average`.
    """
    _checks.check_choice("variant", variant, ("cumulative", "average"))
    eta = (0.005 if variant == "cumulative" else 1.0) if eta is None else eta
    _checks.check_scalar("eta", eta, low=0.0)
    pref = smoothed_logistic(beta * p.h, label_smoothing)
    if variant == "cumulative":
        anchor = -eta * beta * p.pc
    else:
        anchor = eta * (-p.pc / p.lc)
    return pref + anchor, {"preference_loss": jnp.mean(pref), "anchor_loss": jnp.mean(anchor)}


@preference_loss("simpo", reference=False, lengths=True, label_smoothing="[0, 0.5]")
def simpo(p: Pair, *, beta: float = 2.0, label_smoothing: float = 0.0, gamma: float = 0.5):
    """SimPO (Meng et al., 2024), reference-free: `-logsig(b*(pc/Lc - pr/Lr) - gamma)`.

    Paper ranges: b ~ 2-2.5, gamma ~ 0.5 (here gamma is the margin itself, not gamma/b);
    `label_smoothing` as in cDPO.
    """
    _checks.check_scalar("gamma", gamma)
    z = beta * (p.pc / p.lc - p.pr / p.lr) - gamma
    return smoothed_logistic(z, label_smoothing)


@preference_loss("orpo", reference=False, lengths=True, log_probs=True)
def orpo(p: Pair, *, beta: float = 0.1):
    """ORPO (Hong et al., 2024), reference-free:

    `-pc/Lc - b*logsig(logodds(pc/Lc) - logodds(pr/Lr))`, `logodds(a) = a - log(1 - exp a)`.
    `beta` plays the paper's lambda (as in TRL).
    """
    nll = -p.pc / p.lc
    ratio = jax.nn.log_sigmoid(_log_odds(p.pc / p.lc) - _log_odds(p.pr / p.lr))
    return nll - beta * ratio, {"nll": jnp.mean(nll), "log_odds_ratio": jnp.mean(ratio)}


@preference_loss("cpo", reference=False, lengths=True, label_smoothing="[0, 0.5]")
def cpo(p: Pair, *, beta: float = 0.1, label_smoothing: float = 0.0, nll_weight: float = 1.0):
    """CPO (Xu et al., 2024), reference-free: `-logsig(b*(pc - pr)) + nll_weight * (-pc/Lc)`.

    The NLL is the mean-token NLL of the chosen response; `label_smoothing` as in cDPO.
    """
    _checks.check_scalar("nll_weight", nll_weight, low=0.0)
    nll = -p.pc / p.lc
    losses = smoothed_logistic(beta * (p.pc - p.pr), label_smoothing) + nll_weight * nll
    return losses, {"nll": jnp.mean(nll)}


@preference_loss("kto", paired=False)
def kto(
    p: Pair,
    *,
    beta: float = 0.1,
    policy_kl_logps: Array | None = None,
    ref_kl_logps: Array | None = None,
    kl: Array | None = None,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
):
    """KTO (Ethayarajh et al., 2024), unpaired: chosen = desirable [Bd], rejected = undesirable
    [Bu]; Bd and Bu may differ.

    desirable `1 - s(b*(cl - z0))`, undesirable `1 - s(b*(z0 - rl))`, weighted by lambda_D /
    lambda_U, averaged over all Bd + Bu examples. `z0 = max(0, mean(policy_kl_logps -
    ref_kl_logps))` (stop-gradient) from mismatched (x, y') pairs; or pass `kl` directly
    (e.g. 0.0 to drop it, as in APO-unpaired). One of the two is required.
    `losses` is [Bd + Bu]; `reward_margin` is per example when Bd == Bu, else the difference of
    the mean rewards; metric `kl` is z0.
    """
    _checks.check_scalar("desirable_weight", desirable_weight, low=0.0)
    _checks.check_scalar("undesirable_weight", undesirable_weight, low=0.0)
    if p.pc.shape[0] == 0 or p.pr.shape[0] == 0:
        raise ValueError(
            "needs at least one desirable (chosen) and one undesirable "
            f"(rejected) example, got {p.pc.shape[0]} and {p.pr.shape[0]}"
        )
    if policy_kl_logps is not None or ref_kl_logps is not None:
        if kl is not None:
            raise ValueError("pass either `kl` or the KL log-probs, not both")
        pk = _checks.f32("policy_kl_logps", policy_kl_logps)
        rk = _checks.f32("ref_kl_logps", ref_kl_logps)
        _checks.check_same_shape(policy_kl_logps=pk, ref_kl_logps=rk)
        _checks.check_finite("policy_kl_logps", policy_kl_logps)
        _checks.check_finite("ref_kl_logps", ref_kl_logps)
        z0 = jnp.maximum(jnp.mean(pk - rk), 0.0)
    elif kl is not None:
        _checks.check_finite("kl", kl)
        z0 = jnp.maximum(_checks.f32("kl", kl), 0.0)
    else:
        raise ValueError(
            "needs the reference point z0: pass `policy_kl_logps` and "
            "`ref_kl_logps` (log-probs of mismatched (x, y') pairs) or `kl`"
        )
    z0 = sg(z0)
    chosen_losses = 1.0 - jax.nn.sigmoid(beta * (p.cl - z0))
    rejected_losses = 1.0 - jax.nn.sigmoid(beta * (z0 - p.rl))
    losses = jnp.concatenate(
        [desirable_weight * chosen_losses, undesirable_weight * rejected_losses]
    )
    return losses, {"kl": z0}


@preference_loss("asft", reference=False, lengths=True, log_probs=True)
def asft(p: Pair, *, beta: float = 0.1, lam: float = 1.0):
    """ASFT (Wang et al., 2024, "Aligned SFT through absolute likelihood"), reference-free:

    `-pc/Lc + lam*(-logsig(b*f_w) - logsig(-b*f_l))`, `f = logodds(mean-token log-prob)`.
    The exact f and the placement of b are *unverified* (docs/methods.md section 1); with b = 1
    the bracket is `-log pbar_w - log(1 - pbar_l)` for the geometric-mean token probability pbar.
    """
    _checks.check_scalar("lam", lam, low=0.0)
    nll = -p.pc / p.lc
    fw, fl = _log_odds(p.pc / p.lc), _log_odds(p.pr / p.lr)
    absolute = -jax.nn.log_sigmoid(beta * fw) - jax.nn.log_sigmoid(-beta * fl)
    return nll + lam * absolute, {"nll": jnp.mean(nll), "absolute_loss": jnp.mean(absolute)}


@preference_loss("inpo")
def inpo(
    p: Pair,
    *,
    beta: float = 0.1,
    previous_chosen_logps: Array | None = None,
    previous_rejected_logps: Array | None = None,
    eta: float | None = None,
    tau: float = 0.1,
):
    """INPO (Zhang et al., 2024, "Iterative Nash Policy Optimization"), squared loss against two
    frozen models, the reference and the previous iterate pi_t:

    `(log pi(yw)/pi(yl) - eta*tau*log ref(yw)/ref(yl) - (1-eta*tau)*log pi_t(yw)/pi_t(yl)
    - eta/2)**2`. Form reconstructed in docs/methods.md section 1, *unverified*. `eta=None`
    means `1/beta`, so at the first iteration (pi_t = reference, the default when `previous_*`
    are absent) the loss is exactly IPO with target 1/(2b). Needs `0 <= eta*tau <= 1`.
    """
    eta = 1.0 / beta if eta is None else eta
    _checks.check_scalar("eta", eta, low=0.0, low_open=True)
    _checks.check_scalar("tau", tau, low=0.0)
    _checks.check_scalar("eta*tau", eta * tau, low=0.0, high=1.0)
    if (previous_chosen_logps is None) != (previous_rejected_logps is None):
        raise ValueError("pass both previous_chosen_logps and previous_rejected_logps or neither")
    if previous_chosen_logps is None:
        tc, tr = p.rc, p.rr
    else:
        tc = _checks.f32("previous_chosen_logps", previous_chosen_logps)
        tr = _checks.f32("previous_rejected_logps", previous_rejected_logps)
        _checks.check_same_shape(
            policy_chosen_logps=p.pc, previous_chosen_logps=tc, previous_rejected_logps=tr
        )
        _checks.check_finite("previous_chosen_logps", previous_chosen_logps)
        _checks.check_finite("previous_rejected_logps", previous_rejected_logps)
    w = eta * tau
    h = (p.pc - p.pr) - w * (p.rc - p.rr) - (1.0 - w) * (tc - tr)
    return (h - eta / 2.0) ** 2


@preference_loss("sail", label_smoothing="[0, 0.5]")
def sail(
    p: Pair,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    score_coef: float = 0.2,
    self_label_coef: float = 0.0,
    normalize_score_term: bool = False,
    score_term_sign: str = "exact",
):
    """SAIL (Ding et al., 2024, "Self-Improving Online Alignment"), DPO on pairs sampled from the
    current policy, as a surrogate whose gradient adds the score-function term:

    `l = -logsig(b*h)`; `L = l + c * sg(l) * (pc + pr) - (rho/2) * logsig(b*h)**2`, i.e.
    docs/methods.md section 4's `-logsig(bh) - c*sg(logsig(bh))*(pc+pr)` (c = `score_coef`,
    authors' code: 0.2 / 0.2 / 0.3 for DP / PP / PR), plus the self-labelling term with rho =
    `self_label_coef` (0 turns it off). With `label_smoothing` l is the cDPO loss. With c = 1
    and no smoothing, the expected gradient over pairs drawn from pi is exactly the gradient
    of `-E_{y1, y2 ~ pi} logsig(b*h)` (tested on a tabular policy).

    `normalize_score_term=True` divides each `log pi(y)` of the term by its detached magnitude
    `|log pi(y)|`. `score_term_sign`: "exact" (the sign of the gradient above: a descent step
    lowers the sampled responses' likelihoods) or "authors": the opposite sign, which is what
    the authors' code runs (its gradient hook adds `-c * logsig(b*h) / log pi(y)`, dividing by
    the signed log-prob; with `normalize_score_term=True` this is that hook exactly).
    """
    _checks.check_scalar("score_coef", score_coef)
    _checks.check_scalar("self_label_coef", self_label_coef)
    _checks.check_choice("score_term_sign", score_term_sign, ("exact", "authors"))
    z = beta * p.h
    pref = smoothed_logistic(z, label_smoothing)
    if normalize_score_term:
        score = p.pc / sg(jnp.maximum(jnp.abs(p.pc), 1e-6)) + p.pr / sg(
            jnp.maximum(jnp.abs(p.pr), 1e-6)
        )
    else:
        score = p.pc + p.pr
    sign = 1.0 if score_term_sign == "exact" else -1.0
    score_term = sign * score_coef * sg(pref) * score
    self_label = -0.5 * self_label_coef * jax.nn.log_sigmoid(z) ** 2
    return pref + score_term + self_label, {"preference_loss": jnp.mean(pref)}
