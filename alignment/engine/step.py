"""One jitted pure step: `train_step(state, batch) -> (state, metrics)` with explicit in/out
shardings and the state donated, its no-gradient twin `eval_step`, and the placement of a
host batch as global arrays sharded over the (data, fsdp) mesh axes.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alignment import sharding
from alignment.types import TrainState

# loss_fn(params, ref_params, batch) -> (loss, weight, metrics): `loss` a mean over `weight` items
LossFn = Callable[[Any, Any, Mapping[str, jax.Array]], tuple[jax.Array, jax.Array, dict]]


def _split_micro(x, num_micro: int):
    """[B, ...] -> [A, B/A, ...] taking every A-th row, so each micro-batch keeps the batch's
    device layout (row r lives where it lived in the big batch)."""
    b = x.shape[0]
    if b % num_micro:
        raise ValueError(f"batch size {b} is not divisible by grad_accum_steps={num_micro}")
    y = x.reshape(b // num_micro, num_micro, *x.shape[1:])
    return jnp.swapaxes(y, 0, 1)


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    state_shardings,
    batch_shardings,
    mesh,
    grad_accum_steps: int = 1,
    schedule: Callable | None = None,
    donate: bool = True,
):
    """One jitted pure `train_step(state, batch) -> (state, metrics)`.

    `loss_fn(params, ref_params, batch) -> (loss, weight, metrics)` with `loss` a mean over
    `weight` items. With `grad_accum_steps = A > 1` the batch is cut into A micro-batches
    (a `lax.scan`), gradients summed as `sum_i w_i * grad(loss_i)` and divided by `sum_i w_i`:
    exactly the gradient of the big batch's mean. Metrics are weighted the same way.
    """
    rep = sharding.replicated(mesh)

    def micro(params, ref_params, mb):
        def f(p):
            loss, w, m = loss_fn(p, ref_params, mb)
            return loss * w, (w, m)

        (lw, (w, m)), g = jax.value_and_grad(f, has_aux=True)(params)
        return g, lw, w, jax.tree.map(lambda v: v * w, m)

    def train_step(state: TrainState, batch):
        if grad_accum_steps == 1:
            g, lw, w, mw = micro(state.params, state.ref_params, batch)
        else:
            mbs = jax.tree.map(functools.partial(_split_micro, num_micro=grad_accum_steps), batch)
            mbs = jax.tree.map(
                lambda x: jax.lax.with_sharding_constraint(
                    x, NamedSharding(mesh, P(None, *sharding.batch_spec(x.ndim - 1)))
                ),
                mbs,
            )
            first = jax.tree.map(lambda x: x[0], mbs)
            shapes = jax.eval_shape(micro, state.params, state.ref_params, first)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)

            def body(acc, mb):
                out = micro(state.params, state.ref_params, mb)
                return jax.tree.map(lambda a, o: a + o.astype(jnp.float32), acc, out), None

            (g, lw, w, mw), _ = jax.lax.scan(body, zeros, mbs)
        grads = jax.tree.map(lambda x, p: (x / w).astype(p.dtype), g, state.params)
        metrics = {k: v / w for k, v in mw.items()}
        metrics["loss"] = lw / w
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["param_norm"] = optax.global_norm(params)
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)

    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, rep),
        donate_argnums=(0,) if donate else (),
    )


def make_eval_step(loss_fn: LossFn, *, state_shardings, batch_shardings, mesh):
    """Jitted `eval_step(state, batch) -> (loss * w, w, {k: metric * w})` at `state.params`: the
    train step's loss and metrics with no gradient and no update (the state is not donated).
    Summing the outputs over batches and dividing by the summed `w` averages held-out batches
    the way the train step averages micro-batches (token-weighted for token-mean SFT)."""
    rep = sharding.replicated(mesh)

    def eval_step(state: TrainState, batch):
        loss, w, m = loss_fn(state.params, state.ref_params, batch)
        f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
        return f32(loss * w), f32(w), {k: f32(v * w) for k, v in m.items()}

    return jax.jit(eval_step, in_shardings=(state_shardings, batch_shardings), out_shardings=rep)


def evaluate(eval_step, state, batches) -> dict[str, float]:
    """`{"eval_loss": ..., "eval_<metric>": ...}`: weighted means of `eval_step` over `batches`
    (all dispatched before one fetch; sums in float64 on the host)."""
    outs = jax.device_get([eval_step(state, b) for b in batches])
    w = sum(float(o[1]) for o in outs)
    if not w > 0:
        raise ValueError(
            f"the {len(batches)} eval batch(es) carry no weight (no response tokens or pairs "
            "to average over); check data.splits['eval'] or raise eval_batches"
        )
    result = {"eval_loss": sum(float(o[0]) for o in outs) / w}
    for k in outs[0][2]:
        result[f"eval_{k}"] = sum(float(o[2][k]) for o in outs) / w
    return result


def batch_shardings_for(batch: Mapping[str, Any], mesh):
    return {k: sharding.batch_sharding(mesh, np.ndim(v)) for k, v in batch.items()}


def to_global(batch: Mapping[str, np.ndarray], shardings) -> dict[str, jax.Array]:
    """This host's rows -> global arrays sharded over (data, fsdp)."""
    return {
        k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v))
        for k, v in batch.items()
    }


# ----------------------------------------------------------------------------- host loop
