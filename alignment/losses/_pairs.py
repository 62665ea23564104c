"""Shared plumbing of the sequence-level preference losses: input checks and metrics.

Notation (methods.md): `pc, pr` policy log-probs of chosen / rejected summed over response
tokens, `rc, rr` the same under the frozen reference, `cl = pc - rc`, `rl = pr - rr`,
`h = cl - rl`, `Lc, Lr` response token counts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from alignment.losses import _checks


@dataclasses.dataclass(frozen=True)
class Pair:
  """Validated float32 [B] inputs of one preference batch (reference zeros if absent)."""
  pc: jax.Array
  pr: jax.Array
  rc: jax.Array
  rr: jax.Array
  lc: jax.Array | None
  lr: jax.Array | None
  has_reference: bool

  @property
  def cl(self) -> jax.Array:
    return self.pc - self.rc

  @property
  def rl(self) -> jax.Array:
    return self.pr - self.rr


def pair_inputs(loss: str, *, policy_chosen_logps: Any, policy_rejected_logps: Any,
                reference_chosen_logps: Any, reference_rejected_logps: Any,
                chosen_lengths: Any, rejected_lengths: Any, need_reference: bool,
                need_lengths: bool, paired: bool = True) -> Pair:
  """Cast to float32 and validate shapes, finiteness and lengths; errors name `loss`."""
  try:
    pc = _checks.f32("policy_chosen_logps", policy_chosen_logps)
    pr = _checks.f32("policy_rejected_logps", policy_rejected_logps)
    _checks.check_rank("policy_chosen_logps", pc, 1)
    _checks.check_rank("policy_rejected_logps", pr, 1)
    if paired:
      _checks.check_same_shape(policy_chosen_logps=pc, policy_rejected_logps=pr)
    has_ref = reference_chosen_logps is not None or reference_rejected_logps is not None
    if need_reference or has_ref:
      rc = _checks.f32("reference_chosen_logps", reference_chosen_logps)
      rr = _checks.f32("reference_rejected_logps", reference_rejected_logps)
      _checks.check_same_shape(policy_chosen_logps=pc, reference_chosen_logps=rc)
      _checks.check_same_shape(policy_rejected_logps=pr, reference_rejected_logps=rr)
    else:
      rc, rr = jnp.zeros_like(pc), jnp.zeros_like(pr)
    lc = lr = None
    if need_lengths or chosen_lengths is not None or rejected_lengths is not None:
      lc = _checks.f32("chosen_lengths", chosen_lengths)
      lr = _checks.f32("rejected_lengths", rejected_lengths)
      _checks.check_same_shape(policy_chosen_logps=pc, chosen_lengths=lc)
      _checks.check_same_shape(policy_rejected_logps=pr, rejected_lengths=lr)
      _checks.check_positive("chosen_lengths", chosen_lengths)
      _checks.check_positive("rejected_lengths", rejected_lengths)
    for name, raw in (("policy_chosen_logps", policy_chosen_logps),
                      ("policy_rejected_logps", policy_rejected_logps),
                      ("reference_chosen_logps", reference_chosen_logps),
                      ("reference_rejected_logps", reference_rejected_logps)):
      _checks.check_finite(name, raw)
  except (ValueError, TypeError) as e:
    raise type(e)(f"loss {loss!r}: {e}") from None
  return Pair(pc=pc, pr=pr, rc=rc, rr=rr, lc=lc, lr=lr, has_reference=has_ref)


def check_beta(loss: str, beta: Any) -> None:
  try:
    _checks.check_scalar("beta", beta, low=0.0, low_open=True)
  except ValueError as e:
    raise ValueError(f"loss {loss!r}: {e}") from None


def check_label_smoothing(loss: str, label_smoothing: Any, *, high: float = 0.5,
                          high_open: bool = False, low_open: bool = False) -> None:
  try:
    _checks.check_scalar("label_smoothing", label_smoothing, low=0.0, high=high,
                         low_open=low_open, high_open=high_open)
  except ValueError as e:
    raise ValueError(f"loss {loss!r}: {e}") from None


def no_label_smoothing(loss: str, label_smoothing: Any) -> None:
  """Losses without a smoothing term refuse a non-zero value instead of ignoring it."""
  if label_smoothing is None or _checks.is_traced(label_smoothing):
    return
  if float(label_smoothing) != 0.0:
    raise ValueError(f"loss {loss!r} has no label-smoothing term; got label_smoothing="
                     f"{float(label_smoothing)} (use 0.0, or a loss that supports it: dpo, "
                     "robust, exo_pair, sigmoid_norm, aot, aot_unpaired, rpo, simpo, cpo, sail)")


def smoothed_logistic(z: jax.Array, label_smoothing: Any) -> jax.Array:
  """`-(1-ls)*logsig(z) - ls*logsig(-z)`: cross-entropy against a label of confidence 1-ls."""
  return (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(z)
          - label_smoothing * jax.nn.log_sigmoid(-z))


def mean_token_logp(logps: jax.Array, lengths: jax.Array | None, loss: str) -> jax.Array:
  if lengths is None:
    raise ValueError(f"loss {loss!r} needs `chosen_lengths` and `rejected_lengths` "
                     "(response token counts, [B])")
  return logps / lengths


def metrics(losses: jax.Array, p: Pair, beta: Any, **extra: jax.Array) -> dict[str, jax.Array]:
  """The contract metrics plus cheap diagnostics.

  Per example [B]: `losses`, `chosen_rewards = beta*(pc-rc)`, `rejected_rewards`,
  `reward_margin`. Scalars: `reward_accuracy = mean(chosen_rewards > rejected_rewards)`,
  `ranking_accuracy = mean(pc >= pr)` (and its length-normalised form when lengths are
  given), mean `logps_chosen` / `logps_rejected`. Reference-free losses without a reference
  report rewards as `beta*pc`, `beta*pr` (the SimPO/CPO convention).
  """
  chosen_rewards = beta * p.cl
  rejected_rewards = beta * p.rl
  out = {
      "losses": losses,
      "chosen_rewards": chosen_rewards,
      "rejected_rewards": rejected_rewards,
      "reward_margin": chosen_rewards - rejected_rewards,
      "reward_accuracy": jnp.mean((chosen_rewards > rejected_rewards).astype(jnp.float32)),
      "ranking_accuracy": jnp.mean((p.pc >= p.pr).astype(jnp.float32)),
      "logps_chosen": jnp.mean(p.pc),
      "logps_rejected": jnp.mean(p.pr),
  }
  if p.lc is not None and p.lr is not None:
    out["ranking_accuracy_normalized"] = jnp.mean(
        (p.pc / p.lc >= p.pr / p.lr).astype(jnp.float32))
  out.update(extra)
  return out
