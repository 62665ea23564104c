"""Train state: model parameters born sharded (or loaded from a Hugging Face folder), the
optimizer state sharded like them, and the per-token log-prob function of a model graph.

NNX appears here and in `alignment/models/` only: the model is split once into a graphdef and a
pure dict of parameters; the step merges them back inside the jitted function.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding

from alignment import models, sharding
from alignment.models.logprobs import model_logprobs
from alignment.types import TrainState


def model_config(config, vocab_size: int, *, num_labels: int | None = None):
    """The `ModelConfig` of `config.model` (a preset plus the engine's dtype/layout switches);
    `num_labels` makes it a sequence classifier (a score head of that width, no LM head)."""
    m = config.model
    head = dict(num_labels=num_labels, has_lm_head=False) if num_labels else {}
    return models.get_preset(
        m.preset,
        vocab_size=vocab_size,
        dtype=m.dtype,
        param_dtype=m.param_dtype,
        scan_layers=m.scan_layers,
        remat_policy=m.remat_policy,
        **head,
    )


def make_logprob_fn(graphdef, chunk_size: int, remat: bool = True) -> Callable:
    """`logprob_fn(params, input_ids, attention_mask, loss_mask, *, segment_ids, positions)`:
    per-token float32 log-probs `[B, T]` of the model `graphdef` under the pure dict `params`,
    computed `chunk_size` positions at a time (`remat`: recompute each chunk's logits in the
    backward pass rather than keep them; see `models.logprobs.token_logprobs`)."""

    def logprob_fn(
        params, input_ids, attention_mask, loss_mask, *, segment_ids=None, positions=None
    ):
        model = nnx.merge(graphdef, params)
        return model_logprobs(
            model,
            input_ids,
            attention_mask,
            loss_mask,
            segment_ids=segment_ids,
            positions=positions,
            chunk_size=chunk_size,
            remat=remat,
        )

    return logprob_fn


def abstract_model(model_cfg, seed: int = 0):
    """(graphdef, abstract pure-dict params, their shardings per mesh via `param_shardings`)."""
    abs_model = nnx.eval_shape(lambda: models.Transformer(model_cfg, rngs=nnx.Rngs(seed)))
    graphdef, abs_state, rest = nnx.split(abs_model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(
            "the engine expects a model whose state is all nnx.Param; found other "
            f"variables: {jax.tree.structure(rest)}"
        )
    return graphdef, abs_state


def param_shardings(abs_state, mesh) -> Any:
    """Pure dict of `NamedSharding`s from each parameter's logical axes and the rule table."""
    return nnx.to_pure_dict(sharding.state_shardings(abs_state, mesh))


def init_params(model_cfg, mesh, seed: int):
    """Random parameters created already sharded (no full copy on one device first)."""
    graphdef, abs_state = abstract_model(model_cfg, seed)
    shardings = param_shardings(abs_state, mesh)

    @functools.partial(jax.jit, out_shardings=shardings)
    def init():
        model = models.Transformer(model_cfg, rngs=nnx.Rngs(seed))
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    return graphdef, init(), shardings


def load_params(path: str, model_cfg_dict, mesh, *, num_labels: int | None = None):
    """Parameters of a Hugging Face folder, placed with the rule-table shardings.

    `model_cfg_dict` is `config.model`: the folder fixes the architecture; the config still sets
    the parameter dtype (master weights), the compute dtype and the layout switches. `num_labels`
    loads it as a sequence classifier (see `models.from_pretrained`). Returns
    `(graphdef, params, shardings, model_config)`."""
    m = model_cfg_dict
    model = models.from_pretrained(
        path,
        dtype=m.param_dtype,
        mesh=mesh,
        scan_layers=m.scan_layers,
        remat_policy=m.remat_policy,
        num_labels=num_labels,
    )
    # from_pretrained sets one dtype for both; the compute dtype only lives in the graph
    model_cfg = model.config.replace(dtype=m.dtype)
    _, state, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(f"{path}: the engine expects a model whose state is all nnx.Param")
    graphdef, _ = abstract_model(model_cfg)
    shardings = param_shardings(state, mesh)
    params = jax.tree.map(lambda x, s: jax.device_put(x, s), nnx.to_pure_dict(state), shardings)
    return graphdef, params, shardings, model_cfg


def opt_state_shardings(tx, abs_params, shardings, mesh):
    """Optimizer-state leaves shaped like a parameter take its sharding; the rest replicate."""
    abs_opt = jax.eval_shape(tx.init, abs_params)
    rep = sharding.replicated(mesh)
    return optax.tree_map_params(
        tx,
        lambda _, s: s,
        abs_opt,
        shardings,
        transform_non_params=lambda _: rep,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )


def create_train_state(params, shardings, tx, mesh, *, seed: int, with_reference: bool):
    """`(state, state_shardings)`; the optimizer state is initialised sharded like `params`."""
    abs_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    rep = sharding.replicated(mesh)
    st_shardings = TrainState(
        step=rep,
        params=shardings,
        opt_state=opt_state_shardings(tx, abs_params, shardings, mesh),
        rng=rep,
        ref_params=shardings if with_reference else None,
    )

    @functools.partial(jax.jit, out_shardings=st_shardings)
    def init(p):
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=p,
            opt_state=tx.init(p),
            rng=jax.random.PRNGKey(seed),
            # a copy: the step donates the state, and one buffer cannot be donated twice
            ref_params=jax.tree.map(jnp.copy, p) if with_reference else None,
        )

    return init(params), st_shardings


# ----------------------------------------------------------------------------- the step
