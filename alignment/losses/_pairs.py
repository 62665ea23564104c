"""Shared plumbing of the sequence-level preference losses: `@preference_loss`, which declares
and validates their six array inputs once, the `Pair` it hands each loss, and the metrics.

Notation (docs/objectives.md): `pc, pr` policy log-probs of chosen / rejected summed over
response tokens, `rc, rr` the same under the frozen reference, `cl = pc - rc`, `rl = pr - rr`,
`h = cl - rl`, `Lc, Lr` response token counts.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp

from alignment.losses import _checks
from alignment.losses._registry import PAIR_INPUTS, register

Array = Any


@dataclasses.dataclass(frozen=True)
class Pair:
    """Validated float32 [B] inputs of one preference batch (reference zeros if absent).

    `pc, pr` policy log-probs of chosen / rejected (summed over response tokens), `rc, rr` the
    reference's, `lc, lr` response token counts (None when not given), `cl, rl, h` the log-ratios
    and their gap.
    """

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

    @property
    def h(self) -> jax.Array:
        return self.cl - self.rl


def pair_inputs(
    loss: str,
    *,
    policy_chosen_logps: Any,
    policy_rejected_logps: Any,
    ref_chosen_logps: Any,
    ref_rejected_logps: Any,
    chosen_lengths: Any,
    rejected_lengths: Any,
    need_reference: bool,
    need_lengths: bool,
    paired: bool = True,
    log_probs: bool = False,
) -> Pair:
    """Cast to float32 and validate shapes, finiteness and lengths (and, with `log_probs`, that
    the policy's log-probs are <= 0); errors name `loss` and the argument."""
    try:
        pc = _checks.f32("policy_chosen_logps", policy_chosen_logps)
        pr = _checks.f32("policy_rejected_logps", policy_rejected_logps)
        _checks.check_rank("policy_chosen_logps", pc, 1)
        _checks.check_rank("policy_rejected_logps", pr, 1)
        if paired:
            _checks.check_same_shape(policy_chosen_logps=pc, policy_rejected_logps=pr)
        has_ref = ref_chosen_logps is not None or ref_rejected_logps is not None
        if need_reference or has_ref:
            rc = _checks.f32("ref_chosen_logps", ref_chosen_logps)
            rr = _checks.f32("ref_rejected_logps", ref_rejected_logps)
            _checks.check_same_shape(policy_chosen_logps=pc, ref_chosen_logps=rc)
            _checks.check_same_shape(policy_rejected_logps=pr, ref_rejected_logps=rr)
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
        for name, raw in (
            ("policy_chosen_logps", policy_chosen_logps),
            ("policy_rejected_logps", policy_rejected_logps),
            ("ref_chosen_logps", ref_chosen_logps),
            ("ref_rejected_logps", ref_rejected_logps),
        ):
            _checks.check_finite(name, raw)
        if log_probs:
            _checks.check_nonpositive("policy_chosen_logps", policy_chosen_logps)
            _checks.check_nonpositive("policy_rejected_logps", policy_rejected_logps)
    except (ValueError, TypeError) as e:
        raise type(e)(f"loss {loss!r}: {e}") from None
    return Pair(pc=pc, pr=pr, rc=rc, rr=rr, lc=lc, lr=lr, has_reference=has_ref)


def check_beta(loss: str, beta: Any) -> None:
    try:
        _checks.check_scalar("beta", beta, low=0.0, low_open=True)
    except ValueError as e:
        raise ValueError(f"loss {loss!r}: {e}") from None


def check_label_smoothing(
    loss: str,
    label_smoothing: Any,
    *,
    low: float = 0.0,
    high: float = 0.5,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    try:
        _checks.check_scalar(
            "label_smoothing",
            label_smoothing,
            low=low,
            high=high,
            low_open=low_open,
            high_open=high_open,
        )
    except ValueError as e:
        raise ValueError(f"loss {loss!r}: {e}") from None


def no_label_smoothing(loss: str, label_smoothing: Any) -> None:
    """Losses without a smoothing term refuse a non-zero value instead of ignoring it."""
    if label_smoothing is None or _checks.is_traced(label_smoothing):
        return
    if float(label_smoothing) != 0.0:
        raise ValueError(
            f"loss {loss!r} has no label-smoothing term; got label_smoothing="
            f"{float(label_smoothing)} (use 0.0, or a loss that supports it: dpo, "
            "robust, exo_pair, sigmoid_norm, aot, aot_unpaired, rpo, simpo, cpo, "
            "sail)"
        )


def smoothed_logistic(z: jax.Array, label_smoothing: Any) -> jax.Array:
    """`-(1-ls)*logsig(z) - ls*logsig(-z)`: cross-entropy against a label of confidence 1-ls."""
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) - label_smoothing * jax.nn.log_sigmoid(
        -z
    )


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
            (p.pc / p.lc >= p.pr / p.lr).astype(jnp.float32)
        )
    out.update(extra)
    return out


def unpaired_metrics(
    losses: jax.Array, p: Pair, beta: Any, **extra: jax.Array
) -> dict[str, jax.Array]:
    """Metrics of an unpaired loss (chosen [Bc], rejected [Br], Bc and Br may differ).

    `reward_margin` is per example when Bc == Br, else the difference of the mean rewards;
    `reward_accuracy` compares every chosen reward with every rejected one when Bc != Br.
    """
    cr, rr = beta * p.cl, beta * p.rl
    if cr.shape == rr.shape:
        margin = cr - rr
        accuracy = jnp.mean((cr > rr).astype(jnp.float32))
    else:
        margin = jnp.mean(cr) - jnp.mean(rr)
        accuracy = jnp.mean((cr[:, None] > rr[None, :]).astype(jnp.float32))
    out = {
        "losses": losses,
        "chosen_rewards": cr,
        "rejected_rewards": rr,
        "reward_margin": margin,
        "reward_accuracy": accuracy,
        "logps_chosen": jnp.mean(p.pc),
        "logps_rejected": jnp.mean(p.pr),
    }
    out.update(extra)
    return out


def _interval(text: str) -> dict[str, Any]:
    """`"[0, 0.5)"` -> the bounds and openness `_checks.check_scalar` takes."""
    s = text.replace(" ", "")
    low, _, high = s[1:-1].partition(",")
    if s[:1] not in "[(" or s[-1:] not in "])" or not low or not high:
        raise ValueError(f"label_smoothing range must read like '[0, 0.5)', got {text!r}")
    return dict(low=float(low), high=float(high), low_open=s[0] == "(", high_open=s[-1] == ")")


_RENAMED = {
    "reference_chosen_logps": "ref_chosen_logps",
    "reference_rejected_logps": "ref_rejected_logps",
}


def preference_loss(
    name: str,
    *,
    reference: bool = True,
    lengths: bool | Callable[[dict[str, Any]], bool] = False,
    paired: bool = True,
    label_smoothing: str | None = None,
    log_probs: bool = False,
    overwrite: bool = False,
) -> Callable[[Callable], Callable]:
    """Decorator: a sequence-level preference loss from its math, registered as `name`.

    The decorated body is `body(p: Pair, *, beta, <knobs>)` and returns the per-example losses
    [B] or `(losses, extra_metrics)`. The registered function takes, keyword-only, the six
    array inputs `policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
    ref_rejected_logps, chosen_lengths, rejected_lengths` ([B] each), then the body's knobs;
    it checks them once (float32 cast, ranks, shapes, lengths > 0, finite values; the error
    names the loss and the argument), calls the body and returns
    `(mean(losses), metrics(losses, p, beta, **extra))`.

    - `reference`: the reference log-probs are required (True) or only feed the reward metrics
      (False: reference-free; the pair then holds zeros for them when they are not given).
    - `lengths`: the lengths are required (True), optional (False), or required when
      `lengths(knobs)` is true for the call's knobs.
    - `paired`: chosen and rejected share the batch size (False: unpaired, e.g. KTO; metrics
      then from `unpaired_metrics`).
    - `label_smoothing`: the allowed range (e.g. `"[0, 0.5]"`) of the body's own
      `label_smoothing` knob; a body without one still accepts `label_smoothing` (default 0)
      and refuses a non-zero value.
    - `log_probs`: the policy's log-probs must be <= 0 (losses taking their log-odds).
    `beta` must be > 0 for every loss. Errors raised by the body are prefixed with the loss.
    The body stays reachable as `fn.math`.
    """
    smoothing = None if label_smoothing is None else _interval(label_smoothing)

    def deco(body: Callable) -> Callable:
        params = list(inspect.signature(body).parameters.values())
        knobs = params[1:]
        knob_names = [p.name for p in knobs]
        if not params or params[0].kind != params[0].POSITIONAL_OR_KEYWORD:
            raise TypeError(f"preference loss {name!r}: the body's first argument is the Pair")
        if any(p.kind != p.KEYWORD_ONLY or p.default is inspect.Parameter.empty for p in knobs):
            raise TypeError(f"preference loss {name!r}: knobs must be keyword-only with defaults")
        if "beta" not in knob_names:
            raise TypeError(f"preference loss {name!r}: the body must take `beta`")
        if ("label_smoothing" in knob_names) != (smoothing is not None):
            raise TypeError(
                f"preference loss {name!r}: pass label_smoothing='[lo, hi]' exactly "
                "when the body takes a `label_smoothing` knob"
            )
        own_smoothing = smoothing is not None
        public = list(knobs)
        if not own_smoothing:
            public.insert(
                knob_names.index("beta") + 1,
                inspect.Parameter(
                    "label_smoothing",
                    inspect.Parameter.KEYWORD_ONLY,
                    default=0.0,
                    annotation="float",
                ),
            )
        required = ("policy_chosen_logps", "policy_rejected_logps")
        if reference:
            required += ("ref_chosen_logps", "ref_rejected_logps")
        arrays = [
            inspect.Parameter(
                n,
                inspect.Parameter.KEYWORD_ONLY,
                annotation="Array",
                default=inspect.Parameter.empty if n in required else None,
            )
            for n in PAIR_INPUTS
        ]
        signature = inspect.Signature(arrays + public)

        @functools.wraps(body)
        def loss(*args, **kwargs):
            if args:
                raise TypeError(f"loss {name!r} takes keyword arguments only")
            try:
                bound = signature.bind(**kwargs)
            except TypeError as e:
                hint = "".join(
                    f"; `{old}` is now `{new}`" for old, new in _RENAMED.items() if old in kwargs
                )
                raise TypeError(f"loss {name!r}: {e}{hint}") from None
            bound.apply_defaults()
            a = bound.arguments
            values = {k: a[k] for k in knob_names}
            check_beta(name, a["beta"])
            if own_smoothing:
                check_label_smoothing(name, a["label_smoothing"], **smoothing)
            else:
                no_label_smoothing(name, a["label_smoothing"])
            need_lengths = lengths(values) if callable(lengths) else lengths
            p = pair_inputs(
                name,
                **{k: a[k] for k in PAIR_INPUTS},
                need_reference=reference,
                need_lengths=bool(need_lengths),
                paired=paired,
                log_probs=log_probs,
            )
            try:
                out = body(p, **values)
            except ValueError as e:
                if str(e).startswith(f"loss {name!r}"):
                    raise
                raise ValueError(f"loss {name!r}: {e}") from e
            per_example, extra = out if isinstance(out, tuple) else (out, {})
            finish = metrics if paired else unpaired_metrics
            return jnp.mean(per_example), finish(per_example, p, a["beta"], **extra)

        loss.__signature__ = signature
        loss.math = body
        register(name, "preference", overwrite=overwrite)(loss)
        return loss

    return deco
