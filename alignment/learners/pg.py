"""The policy-gradient loop (PPO, GRPO and its variants, Self-Rewarding PPO) and its pieces:
a rollout minibatch -> `(loss, weight, metrics)` for the engine's `make_train_step`.

    loss_fn = make_pg_loss(graphdef, loss=losses.get("grpo"), loss_kwargs={...}, with_values=False)
    step = engine.make_train_step(loss_fn, tx, ...)      # one jitted, donated update per minibatch
    train_pg(config, workdir)                            # the loop (`learners/online.py` has the steps)

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
import numpy as np

from alignment import advantages as adv_lib
from alignment import engine, losses, models, sharding
from alignment.learners import online, rollout
from alignment.models.logprobs import shift_to_tokens, token_logprobs

sg = jax.lax.stop_gradient


def init_value_head(d_model: int) -> dict[str, jax.Array]:
    """Zero-initialised head: V = 0 everywhere at the start, so early advantages are the returns."""
    return {"w": jnp.zeros((d_model,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def policy_outputs(
    graphdef,
    policy_params,
    value_head,
    input_ids,
    attention_mask,
    loss_mask,
    *,
    chunk_size: int,
    value_trunk_grad: bool = False,
):
    """`(logps_BxT, entropy_BxT, values_BxT | None)` in the log-prob convention of
    `alignment.models.logprobs.model_logprobs`: position t holds the quantity of token x_t given
    x_<t (its log-prob, the entropy of the distribution it was drawn from, and the value of the
    state before it), 0 where `loss_mask` (or the previous token) is not valid. One forward."""
    model = models.merge(graphdef, policy_params)
    hidden_BxTxD = model(input_ids, attention_mask, return_hidden=True)
    input_ids = jnp.asarray(input_ids)
    attn = jnp.asarray(attention_mask).astype(bool)
    valid_BxT = jnp.asarray(loss_mask).astype(bool) & attn
    valid_BxT = valid_BxT.at[:, 1:].set(valid_BxT[:, 1:] & attn[:, :-1]).at[:, 0].set(False)
    logps, entropy = token_logprobs(
        hidden_BxTxD[:, :-1],
        model.unembed_weight(),
        input_ids[:, 1:],
        valid_BxT[:, 1:],
        chunk_size=chunk_size,
        softcap=model.config.final_logit_softcap,
        return_entropy=True,
    )
    logps, entropy = shift_to_tokens(logps, valid_BxT), shift_to_tokens(entropy, valid_BxT)
    values = None
    if value_head is not None:
        h = hidden_BxTxD[:, :-1].astype(jnp.float32)
        h = h if value_trunk_grad else sg(h)
        v = jnp.einsum("btd,d->bt", h, value_head["w"]) + value_head["b"]
        values = shift_to_tokens(v, valid_BxT)
    return logps, entropy, values


def make_pg_loss(
    graphdef,
    *,
    loss: Callable,
    loss_kwargs: Mapping[str, Any],
    with_values: bool,
    chunk_size: int,
    value_trunk_grad: bool = False,
    use_entropy: bool = False,
):
    """`loss_fn(params, ref_params, batch) -> (loss, weight, metrics)` for a policy-gradient loss of
    `alignment.losses` (grpo, ppo, rloo, reinforce). `weight` = 1: each minibatch is one update, so
    gradient accumulation (if any) averages minibatch means. Metrics always carry the token-mean
    policy `entropy`; the loss sees `entropy` only when `use_entropy` (an entropy bonus)."""
    kwargs = dict(loss_kwargs)

    def loss_fn(params, ref_params, batch):
        del ref_params  # frozen models' log-probs arrive precomputed in the batch
        policy = params["policy"] if with_values else params
        head = params["value_head"] if with_values else None
        logps, entropy, values = policy_outputs(
            graphdef,
            policy,
            head,
            batch["input_ids"],
            batch["attention_mask"],
            batch["loss_mask"],
            chunk_size=chunk_size,
            value_trunk_grad=value_trunk_grad,
        )
        mask = batch["loss_mask"].astype(jnp.float32)
        inputs = dict(
            logps=logps, mask=mask, advantages=batch["advantages"], old_logps=batch["old_logps"]
        )
        if "ref_logps" in batch:
            inputs["ref_logps"] = batch["ref_logps"]
        if use_entropy:
            inputs["entropy"] = entropy
        if "num_tokens" in batch:
            inputs["num_tokens"] = batch["num_tokens"][0]
        if with_values:
            inputs.update(values=values, old_values=batch["old_values"], returns=batch["returns"])
        value, metrics = loss(**inputs, **kwargs)
        out = {
            ("kl_in_loss" if k == "kl" else k): jnp.mean(jnp.asarray(v, jnp.float32))
            for k, v in metrics.items()
            if not k.startswith("per_token") and k != "sequence_loss"
        }
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
        _, _, v = policy_outputs(
            graphdef,
            params["policy"],
            params["value_head"],
            input_ids,
            attention_mask,
            loss_mask,
            chunk_size=chunk_size,
        )
        return v

    return values


def ppo_advantages(
    *,
    terminal_rewards,
    old_logps,
    ref_logps,
    values,
    mask,
    kl_coef: float,
    gamma: float,
    lam: float,
    whiten: bool,
):
    """PPO-RLHF targets (Ziegler et al., 2019; Ouyang et al., 2022): per-token reward
    `R_t = -kl_coef * (old_logp_t - ref_logp_t) + [t = last] * r`, GAE(gamma, lam) advantages and
    returns; advantages whitened over the batch's response tokens when `whiten`.
    `terminal_rewards` [B]; `old_logps`, `ref_logps`, `values`, `mask` [B, T]."""
    rewards_BxT, _ = adv_lib.token_rewards(
        mask=mask,
        terminal_rewards=terminal_rewards,
        logps=old_logps,
        ref_logps=ref_logps,
        kl_coef=kl_coef,
    )
    adv, returns = adv_lib.gae(rewards=rewards_BxT, values=values, mask=mask, gamma=gamma, lam=lam)
    if whiten:
        adv = adv_lib.whiten(adv, mask)
    return adv, returns


# ----------------------------------------------------------------------------- the loop


def load_base(config, model_cfg, mesh):
    """pi_base of Self-Rewarding PPO: `reward.base_path` (an HF folder), or, when none is given
    and `online.random_base` is set (tests and tiny runs), a random init of the policy's
    architecture with seed `config.seed + 1`. Validation refuses a config with neither."""
    if not (config.reward.base_path or config.online.random_base):
        raise ValueError(
            "online.algorithm='sr_ppo' needs reward.base_path (or online.random_base=True)"
        )
    if config.reward.base_path:
        graphdef, params, _, _ = engine.load_params(config.reward.base_path, config.model, mesh)
        return graphdef, params
    graphdef, params, _ = engine.init_params(model_cfg, mesh, config.seed + 1)
    return graphdef, params


def train_pg(config, workdir: str):
    """Runs (or resumes) a policy-gradient online config (`online.algorithm` ppo, grpo or sr_ppo)
    in `workdir`; returns the final train state."""
    o = config.online
    n_rows = o.num_prompts * o.group_size
    run = online.open_online(
        config, workdir, rows_per_step=n_rows, rows_per_minibatch=n_rows // o.num_minibatches
    )
    with run.ctx as ctx:
        base = load_base(config, ctx.model_config, ctx.mesh) if o.algorithm == "sr_ppo" else None
        with_values = o.advantage == "gae"
        params, shardings = ctx.params, ctx.shardings
        if with_values:
            rep = sharding.replicated(ctx.mesh)
            params = {
                "policy": params,
                "value_head": jax.device_put(init_value_head(ctx.model_config.d_model), rep),
            }
            shardings = {"policy": shardings, "value_head": {"w": rep, "b": rep}}
        policy_of = (lambda p: p["policy"]) if with_values else (lambda p: p)
        tx, schedule = online.make_optimizer(config, params)
        state, st_shardings = ctx.create_state(tx, params=params, shardings=shardings)
        del params
        kwargs = config.loss_kwargs.to_dict()
        chunk = config.model.logprob_chunk_size
        loss_fn = make_pg_loss(
            ctx.graphdef,
            loss=losses.get(config.loss),
            loss_kwargs=kwargs,
            with_values=with_values,
            chunk_size=chunk,
            value_trunk_grad=o.value_trunk_grad,
            use_entropy=float(kwargs.get("entropy_coef", 0.0)) != 0.0,
        )
        value_fn = make_value_fn(ctx.graphdef, chunk) if with_values else None
        state, _, prompts_stream, start = run.resume(state, st_shardings)
        metrics = ctx.metrics
        make_step = functools.partial(
            engine.make_train_step,
            loss_fn,
            tx,
            state_shardings=st_shardings,
            mesh=ctx.mesh,
            schedule=schedule,
        )
        train_step = None
        for step_no in range(start + 1, config.num_train_steps + 1):
            prompts = [p for p in prompts_stream.next(o.num_prompts) for _ in range(o.group_size)]
            r = run.rollout(step_no, prompts, policy_of(state.params))
            mask = r.mask
            if o.algorithm == "sr_ppo":
                base_logps = np.asarray(
                    run.forward(
                        base[1], r.dev["input_ids"], r.dev["attention_mask"], r.dev["loss_mask"]
                    )
                )
                train_reward = r.seq_ref - rollout.sequence_sums(
                    base_logps, mask
                )  # log pi_sft - log pi_base
                if (
                    o.log_ratio_reward == "token_mean"
                ):  # removes the sum's pull towards long responses
                    train_reward = train_reward / np.maximum(mask.sum(-1), 1).astype(np.float32)
            else:
                train_reward = r.train_reward
            if o.advantage == "gae":
                old_values = np.asarray(
                    value_fn(
                        state.params,
                        r.dev["input_ids"],
                        r.dev["attention_mask"],
                        r.dev["loss_mask"],
                    )
                )
                adv, returns = ppo_advantages(
                    terminal_rewards=train_reward,
                    old_logps=r.batch["old_logps"],
                    ref_logps=r.ref_logps,
                    values=old_values,
                    mask=mask,
                    kl_coef=o.kl_coef,
                    gamma=o.gamma,
                    lam=o.lam,
                    whiten=o.whiten_advantages,
                )
                train_np = dict(
                    r.batch,
                    advantages=np.asarray(adv),
                    returns=np.asarray(returns),
                    old_values=old_values,
                )
            else:
                shaped = train_reward - o.kl_coef * r.seq_kl  # KL in the reward (RLOO); 0 for GRPO
                kind = {"group": "group", "group_mean": "group", "rloo": "rloo"}[o.advantage]
                adv = rollout.group_advantages(
                    shaped, kind=kind, group_size=o.group_size, use_std=o.advantage == "group"
                )
                train_np = dict(r.batch, advantages=adv)
                if kwargs.get("aggregation") == "dapo":
                    train_np["num_tokens"] = np.full(
                        (n_rows,), float(mask.sum()) / o.num_minibatches, np.float32
                    )
            if float(kwargs.get("beta", 0.0)) > 0:
                train_np["ref_logps"] = r.ref_logps  # KL in the loss (GRPO's k3)
            state, train_step, step_ms, train_tokens, train_time = online.update(
                run, state, train_np, step_no=step_no, train_step=train_step, make_step=make_step
            )
            m = online.mean_metrics(step_ms)
            m.update(
                online.rollout_metrics(r, train_reward),
                train_tokens_per_s=train_tokens / max(train_time, 1e-9),
                train_time_s=train_time,
            )
            m.setdefault("clip_fraction", 0.0)  # reinforce without clipping never clips
            metrics.push(step_no, host=m)
            if ctx.should_save(step_no):
                ctx.save(
                    step_no, state, {"prompt_cursor": prompts_stream.cursor, "offline_cursor": 0}
                )
        ctx.finish(policy_of(state.params))
        return state
