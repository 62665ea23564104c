"""Policy-gradient learners over a rollout minibatch -> `(loss, weight, metrics)` for
`alignment.train.make_train_step`.

    loss_fn = make_pg_loss(graphdef, loss=losses.get("grpo"), loss_kwargs={...}, with_values=False)
    step = train.make_train_step(loss_fn, tx, ...)       # one jitted, donated update per minibatch

The rollout minibatch holds `input_ids`, `attention_mask`, `loss_mask` (response tokens),
`old_logps` (sampler log-probs), `advantages` ([B] per sequence or [B, T] per token), optional
`ref_logps` (KL in the loss), and for PPO `old_values` / `returns`; for DAPO's token-mean over the
whole generation batch, `num_tokens` ([B], every entry the batch's response-token count).

PPO's critic is a linear value head on the policy's final hidden states (params
`{"policy": ..., "value_head": {"w": [D], "b": []}}`), reading them through a stop-gradient unless
`value_trunk_grad`: the value loss then never moves the policy (TRL uses a separate value model;
a head on the shared trunk is the cheaper, InstructGPT-style choice, and detaching it keeps the
policy update exactly the clipped surrogate).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient


def init_value_head(d_model: int) -> dict[str, jax.Array]:
    """Zero-initialised head: V = 0 everywhere at the start, so early advantages are the returns."""
    return {"w": jnp.zeros((d_model,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def policy_outputs(graphdef, policy_params, value_head, input_ids, attention_mask, loss_mask, *,
                   chunk_size: int, value_trunk_grad: bool = False):
    """`(logps_BxT, entropy_BxT, values_BxT | None)` in the log-prob convention of
    `alignment.models.logprobs.model_logprobs`: position t holds the quantity of token x_t given
    x_<t (its log-prob, the entropy of the distribution it was drawn from, and the value of the
    state before it), 0 where `loss_mask` (or the previous token) is not valid. One forward."""
    from alignment import models
    from alignment.models.logprobs import shift_to_tokens, token_logprobs
    model = models.merge(graphdef, policy_params)
    hidden_BxTxD = model(input_ids, attention_mask, return_hidden=True)
    input_ids = jnp.asarray(input_ids)
    attn = jnp.asarray(attention_mask).astype(bool)
    valid_BxT = jnp.asarray(loss_mask).astype(bool) & attn
    valid_BxT = valid_BxT.at[:, 1:].set(valid_BxT[:, 1:] & attn[:, :-1]).at[:, 0].set(False)
    logps, entropy = token_logprobs(hidden_BxTxD[:, :-1], model.unembed_weight(), input_ids[:, 1:],
                                    valid_BxT[:, 1:], chunk_size=chunk_size,
                                    softcap=model.config.final_logit_softcap, return_entropy=True)
    logps, entropy = shift_to_tokens(logps, valid_BxT), shift_to_tokens(entropy, valid_BxT)
    values = None
    if value_head is not None:
        h = hidden_BxTxD[:, :-1].astype(jnp.float32)
        h = h if value_trunk_grad else sg(h)
        v = jnp.einsum("btd,d->bt", h, value_head["w"]) + value_head["b"]
        values = shift_to_tokens(v, valid_BxT)
    return logps, entropy, values


def make_pg_loss(graphdef, *, loss: Callable, loss_kwargs: Mapping[str, Any], with_values: bool,
                 chunk_size: int, value_trunk_grad: bool = False, use_entropy: bool = False):
    """`loss_fn(params, ref_params, batch) -> (loss, weight, metrics)` for a policy-gradient loss of
    `alignment.losses` (grpo, ppo, rloo, reinforce). `weight` = 1: each minibatch is one update, so
    gradient accumulation (if any) averages minibatch means. Metrics always carry the token-mean
    policy `entropy`; the loss sees `entropy` only when `use_entropy` (an entropy bonus)."""
    kwargs = dict(loss_kwargs)

    def loss_fn(params, ref_params, batch):
        del ref_params  # frozen models' log-probs arrive precomputed in the batch
        policy = params["policy"] if with_values else params
        head = params["value_head"] if with_values else None
        logps, entropy, values = policy_outputs(graphdef, policy, head, batch["input_ids"],
                                                batch["attention_mask"], batch["loss_mask"],
                                                chunk_size=chunk_size, value_trunk_grad=value_trunk_grad)
        mask = batch["loss_mask"].astype(jnp.float32)
        inputs = dict(logps=logps, mask=mask, advantages=batch["advantages"], old_logps=batch["old_logps"])
        if "ref_logps" in batch:
            inputs["ref_logps"] = batch["ref_logps"]
        if use_entropy:
            inputs["entropy"] = entropy
        if "num_tokens" in batch:
            inputs["num_tokens"] = batch["num_tokens"][0]
        if with_values:
            inputs.update(values=values, old_values=batch["old_values"], returns=batch["returns"])
        value, metrics = loss(**inputs, **kwargs)
        out = {("kl_in_loss" if k == "kl" else k): jnp.mean(jnp.asarray(v, jnp.float32))
               for k, v in metrics.items() if not k.startswith("per_token") and k != "sequence_loss"}
        n = jnp.maximum(jnp.sum(mask), 1.0)
        out["entropy"] = jnp.sum(entropy * mask) / n
        if with_values:
            out["value_mean"] = jnp.sum(values * mask) / n
        return value, jnp.ones((), jnp.float32), out
    return loss_fn


@functools.lru_cache(maxsize=8)
def make_value_fn(graphdef, chunk_size: int) -> Callable:
    """Jitted `values(params, input_ids, attention_mask, loss_mask) -> values_BxT` of the PPO
    critic at rollout time (the `old_values` of the clipped value loss)."""
    @jax.jit
    def values(params, input_ids, attention_mask, loss_mask):
        _, _, v = policy_outputs(graphdef, params["policy"], params["value_head"], input_ids,
                                 attention_mask, loss_mask, chunk_size=chunk_size)
        return v
    return values


def ppo_advantages(*, terminal_rewards_B, old_logps_BxT, ref_logps_BxT, values_BxT, mask_BxT,
                   kl_coef: float, gamma: float, lam: float, whiten: bool):
    """PPO-RLHF targets (Ziegler et al., 2019; Ouyang et al., 2022): per-token reward
    `R_t = -kl_coef * (old_logp_t - ref_logp_t) + [t = last] * r`, GAE(gamma, lam) advantages and
    returns; advantages whitened over the batch's response tokens when `whiten`."""
    from alignment import advantages as adv_lib
    rewards_BxT, _ = adv_lib.token_rewards(mask=mask_BxT, terminal_rewards=terminal_rewards_B,
                                           logps=old_logps_BxT, ref_logps=ref_logps_BxT, kl_coef=kl_coef)
    adv, returns = adv_lib.gae(rewards=rewards_BxT, values=values_BxT, mask=mask_BxT, gamma=gamma, lam=lam)
    if whiten:
        adv = adv_lib.whiten(adv, mask_BxT)
    return adv, returns
