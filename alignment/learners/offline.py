"""Offline learners: SFT demonstrations and preference pairs -> `(loss, weight, metrics)`.

A learner sees the policy only as `logprob_fn(params, input_ids, attention_mask, loss_mask, *,
segment_ids=None, positions=None) -> logps_BxT` (float32, `logps[:, t] = log p(x_t | x_<t)`
masked by `loss_mask`, 0 at t = 0); `alignment.engine.make_logprob_fn` builds it. `weight` is
the count the loss averages over (response tokens for SFT, pairs for preference losses): the
step weights micro-batch gradients by it so that gradient accumulation equals one big batch.

Preference pairs run as one forward of 2B rows, chosen and rejected interleaved
(`[c_0, r_0, c_1, r_1, ...]`) so that a pair stays on the device that holds it under batch
sharding. The reference log-probs come either from frozen parameters inside the same step
(`reference.mode = "in_step"`, +1 forward of cost) or from the batch
(`reference.mode = "precomputed"`, fields `ref_chosen_logps` / `ref_rejected_logps`, filled
once per example by `reference_logps` and cached by the host loop). The names of the loss inputs
are `alignment.losses.INPUTS`; a loss gets the ones it declares (`alignment.losses.spec`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp

from alignment import losses

LogprobFn = Callable[..., jax.Array]
REFERENCE_MODES = ("in_step", "precomputed")

PREF_FIELDS = (
    "chosen_input_ids",
    "chosen_attention_mask",
    "chosen_loss_mask",
    "rejected_input_ids",
    "rejected_attention_mask",
    "rejected_loss_mask",
)
SFT_FIELDS = ("input_ids", "attention_mask", "loss_mask")
# batch fields of precomputed reference log-probs: the loss inputs of the same names
REFERENCE_FIELDS = ("ref_chosen_logps", "ref_rejected_logps")

# the loss inputs each offline learner computes (names owned by `alignment.losses.INPUTS`); the
# preference learner serves both the sequence-level and the token-level family
PROVIDES = {
    "sft": frozenset(losses.INPUTS["supervised"]),
    "preference": frozenset(losses.INPUTS["preference"] + losses.INPUTS["token_preference"]),
}


def needs_reference(loss_fn: Callable) -> bool:
    """Whether a loss requires reference log-probs (reference-free ones skip that forward)."""
    return losses.needs_reference(loss_fn)


def check_supported(loss_fn: Callable, kind: str, loss_kwargs: Iterable[str] = ()) -> None:
    """Fails early when a loss requires an argument that neither this learner (`kind` 'sft' or
    'preference') provides nor `loss_kwargs` sets."""
    spec = losses.spec(loss_fn)
    unset_knobs = spec.required - set(spec.inputs) - set(loss_kwargs)
    missing = (spec.required_inputs - PROVIDES[kind]) | unset_knobs
    if missing:
        raise ValueError(
            f"loss {loss_fn.__name__!r} requires {sorted(missing)}, which the "
            f"offline {kind} learner does not provide"
        )


def call_loss(loss_fn: Callable, available: Mapping[str, Any], loss_kwargs: Mapping[str, Any]):
    """Calls `loss_fn` with the inputs it declares (`alignment.losses.spec`) out of `available`,
    plus every configured knob."""
    spec = losses.spec(loss_fn)
    overlap = set(available) & set(loss_kwargs)
    if overlap:
        raise ValueError(
            f"loss_kwargs {sorted(overlap)} collide with array inputs the learner provides"
        )
    names = set(spec.inputs) | set(spec.knobs)
    unknown = set(loss_kwargs) - names
    if unknown and not spec.var_kw:
        raise ValueError(
            f"loss_kwargs {sorted(unknown)} are not arguments of {loss_fn.__name__}; "
            f"it takes {sorted(names)}"
        )
    inputs = {k: v for k, v in available.items() if spec.var_kw or k in spec.inputs}
    missing = spec.required - set(inputs) - set(loss_kwargs)
    if missing:
        raise ValueError(
            f"{loss_fn.__name__} needs {sorted(missing)}, which the offline learner does not "
            f"provide (it provides {sorted(available)}) and loss_kwargs does not set"
        )
    return loss_fn(**inputs, **loss_kwargs)


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Per-example metric arrays become batch means; per-example `losses` (which duplicate
    `loss`) and per-token arrays (whose plain mean would count padding) are left out."""
    return {
        k: jnp.mean(jnp.asarray(v, jnp.float32))
        for k, v in metrics.items()
        if k != "losses" and not k.startswith("per_token")
    }


def _require(batch: Mapping[str, Any], fields, what: str) -> None:
    missing = [f for f in fields if f not in batch]
    if missing:
        raise KeyError(f"{what} batch is missing {missing}; it has {sorted(batch)}")


def sft_loss(
    logprob_fn: LogprobFn,
    params,
    batch: Mapping[str, jax.Array],
    *,
    loss_fn: Callable,
    loss_kwargs: Mapping[str, Any],
    ref_params=None,
):
    """A supervised loss on demonstrations, packing-aware through segment ids and positions.

    The weight is the response-token count for `aggregation="token_mean"` (so accumulation is
    exact); other aggregations weight every micro-batch equally (a mean of micro-batch means).
    Losses with a `ref_logps` input (f-divergence SFT) get it from `ref_params` in-step.
    """
    _require(batch, SFT_FIELDS, "SFT")
    mask_BxT = batch["loss_mask"]
    kw = dict(segment_ids=batch.get("segment_ids"), positions=batch.get("positions"))
    logps_BxT = logprob_fn(params, batch["input_ids"], batch["attention_mask"], mask_BxT, **kw)
    mask_f = mask_BxT.astype(jnp.float32)
    available = {"logps": logps_BxT, "mask": mask_f}
    if kw["segment_ids"] is not None:
        available["segment_ids"] = kw["segment_ids"]
    if needs_reference(loss_fn):
        if ref_params is None:
            raise ValueError(
                f"{loss_fn.__name__} needs reference log-probs: run it with reference.mode='in_step'"
            )
        available["ref_logps"] = logprob_fn(
            jax.lax.stop_gradient(ref_params),
            batch["input_ids"],
            batch["attention_mask"],
            mask_BxT,
            **kw,
        )
    loss, metrics = call_loss(loss_fn, available, loss_kwargs)
    num_tokens = jnp.sum(mask_f)
    token_mean = loss_kwargs.get("aggregation", "token_mean") == "token_mean"
    out = _scalar_metrics(metrics)
    out["response_tokens"] = num_tokens
    return loss, num_tokens if token_mean else jnp.ones((), jnp.float32), out


def _interleave(a_BxT, b_BxT):
    """[B, T] x2 -> [2B, T] rows (a_0, b_0, a_1, b_1, ...), padding the shorter T with zeros."""
    t = max(a_BxT.shape[1], b_BxT.shape[1])
    pad = lambda x: jnp.pad(x, ((0, 0), (0, t - x.shape[1])))
    return jnp.stack([pad(a_BxT), pad(b_BxT)], axis=1).reshape(-1, t)


def pair_logps(logprob_fn: LogprobFn, params, batch: Mapping[str, jax.Array]):
    """Summed response log-probs of chosen and rejected ([B] each, float32) from one forward."""
    ids = _interleave(batch["chosen_input_ids"], batch["rejected_input_ids"])
    attn = _interleave(batch["chosen_attention_mask"], batch["rejected_attention_mask"])
    mask = _interleave(batch["chosen_loss_mask"], batch["rejected_loss_mask"])
    logps_2BxT = logprob_fn(params, ids, attn, mask)
    seq_Bx2 = jnp.sum(logps_2BxT * mask, axis=-1).reshape(-1, 2)
    tok_BxT = logps_2BxT.reshape(-1, 2, logps_2BxT.shape[-1])
    return seq_Bx2[:, 0], seq_Bx2[:, 1], tok_BxT[:, 0], tok_BxT[:, 1]


def reference_logps(logprob_fn: LogprobFn, ref_params, batch: Mapping[str, jax.Array]):
    """`(ref_chosen_logps, ref_rejected_logps)` [B] each, for the precomputed mode."""
    _require(batch, PREF_FIELDS, "preference")
    chosen, rejected, _, _ = pair_logps(logprob_fn, ref_params, batch)
    return chosen, rejected


def preference_loss(
    logprob_fn: LogprobFn,
    params,
    batch: Mapping[str, jax.Array],
    *,
    loss_fn: Callable,
    loss_kwargs: Mapping[str, Any],
    reference_mode: str,
    ref_params=None,
    token_level: bool = False,
):
    """Any registered preference loss on a batch of pairs; see the module docstring.

    `token_level=True` (the `token_preference` family) passes per-token `[B, T]` log-probs
    under the same names, with `chosen_mask` / `rejected_mask`; their reference must be in-step.
    """
    if reference_mode not in REFERENCE_MODES:
        raise ValueError(f"reference.mode must be one of {REFERENCE_MODES}, got {reference_mode!r}")
    _require(batch, PREF_FIELDS, "preference")
    pc, pr, pc_BxT, pr_BxT = pair_logps(logprob_fn, params, batch)
    chosen_mask = batch["chosen_loss_mask"].astype(jnp.float32)
    rejected_mask = batch["rejected_loss_mask"].astype(jnp.float32)
    available = {
        "policy_chosen_logps": pc_BxT if token_level else pc,
        "policy_rejected_logps": pr_BxT if token_level else pr,
        "chosen_lengths": jnp.sum(chosen_mask, -1),
        "rejected_lengths": jnp.sum(rejected_mask, -1),
        "chosen_mask": chosen_mask,
        "rejected_mask": rejected_mask,
    }
    if needs_reference(loss_fn):
        if reference_mode == "in_step":
            if ref_params is None:
                raise ValueError("reference.mode='in_step' needs ref_params in the train state")
            rc, rr, rc_BxT, rr_BxT = pair_logps(
                logprob_fn, jax.lax.stop_gradient(ref_params), batch
            )
            if token_level:
                rc, rr = rc_BxT, rr_BxT
        elif token_level:
            raise ValueError(
                "token-level preference losses need per-token reference log-probs: "
                "use reference.mode='in_step'"
            )
        else:
            _require(batch, REFERENCE_FIELDS, "preference (reference.mode='precomputed')")
            rc = batch["ref_chosen_logps"].astype(jnp.float32)
            rr = batch["ref_rejected_logps"].astype(jnp.float32)
        available["ref_chosen_logps"] = rc
        available["ref_rejected_logps"] = rr
    loss, metrics = call_loss(loss_fn, available, loss_kwargs)
    out = _scalar_metrics(metrics)
    out.setdefault("logps_chosen", jnp.mean(pc))
    out.setdefault("logps_rejected", jnp.mean(pr))
    if "ref_chosen_logps" in available and not token_level:
        # mean sequence log pi/ref over the batch's responses: KL(pi || ref) when they are drawn
        # from pi, a cheap drift gauge for offline pairs (exact sampled KL: evaluate_policy)
        out.setdefault(
            "kl",
            0.5
            * (
                jnp.mean(pc - available["ref_chosen_logps"])
                + jnp.mean(pr - available["ref_rejected_logps"])
            ),
        )
    return loss, jnp.asarray(pc.shape[0], jnp.float32), out
