"""The jitted step: gradient accumulation == one big batch, precomputed == in-step reference,
and the host loop's NaN guard / metrics files on a tiny SFT run."""

import json
import os

import engine_testlib as lib  # tests/ is on sys.path (conftest.py)
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment import engine as T
from alignment import learners, losses, metrics, optim, sharding
from alignment.engine import config as config_files
from alignment.learners import offline


def _setup(mesh, with_reference=False):
    graphdef, params, shardings = T.init_params(lib.tiny_model(), mesh, seed=0)
    tx = optim.make_optimizer(lib.optim_cfg(learning_rate=1e-3), params, 10)
    state, st_sh = T.create_train_state(
        params, shardings, tx, mesh, seed=0, with_reference=with_reference
    )
    return graphdef, tx, state, st_sh


def test_grad_accumulation_equals_one_big_batch_for_token_mean_sft():
    # uneven response lengths per row: a plain mean of micro-batch means would differ
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    batch = lib.random_sft(seed=3)
    results = []
    for accum in (1, 4):
        graphdef, tx, state, st_sh = _setup(mesh)
        logprob_fn = T.make_logprob_fn(graphdef, chunk_size=16)
        loss_fn = lambda p, ref, b: offline.sft_loss(  # noqa: E731
            logprob_fn, p, b, loss_fn=losses.get("sft"), loss_kwargs={}
        )
        b_sh = T.batch_shardings_for(batch, mesh)
        step = T.make_train_step(
            loss_fn,
            tx,
            state_shardings=st_sh,
            batch_shardings=b_sh,
            mesh=mesh,
            grad_accum_steps=accum,
        )
        state, m = step(state, T.to_global(batch, b_sh))
        results.append((m, jax.tree.leaves(jax.device_get(state.params))))
    (m1, p1), (m4, p4) = results
    assert float(m1["loss"]) == pytest.approx(float(m4["loss"]), rel=1e-6)
    assert float(m1["grad_norm"]) == pytest.approx(float(m4["grad_norm"]), rel=1e-5)
    assert float(m1["response_tokens"]) == float(np.sum(batch["loss_mask"]))
    for a, b in zip(p1, p4):
        np.testing.assert_allclose(a, b, atol=2e-6)
    # the sft loss equals its closed form: mean NLL over response tokens
    assert np.isfinite(float(m1["loss"])) and float(m1["loss"]) > 0


def test_precomputed_reference_equals_in_step_and_reference_free_losses_skip_it():
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    graphdef, params, _ = T.init_params(lib.tiny_model(), mesh, seed=0)
    logprob_fn = T.make_logprob_fn(graphdef, chunk_size=16)
    batch = {k: jnp.asarray(v) for k, v in lib.random_pairs(seed=4).items()}
    # a "reference" that differs from the policy, so the reference term matters
    ref = jax.tree.map(lambda x: x * 0.9, params)
    dpo = losses.get("dpo")

    @jax.jit
    def both(p, r, b):
        in_step = offline.preference_loss(
            logprob_fn,
            p,
            b,
            loss_fn=dpo,
            loss_kwargs={"beta": 0.1},
            reference_mode="in_step",
            ref_params=r,
        )
        rc, rr = offline.reference_logps(logprob_fn, r, b)
        pre = offline.preference_loss(
            logprob_fn,
            p,
            {**b, "ref_chosen_logps": rc, "ref_rejected_logps": rr},
            loss_fn=dpo,
            loss_kwargs={"beta": 0.1},
            reference_mode="precomputed",
        )
        return in_step, pre, rc, rr

    (l1, w1, m1), (l2, w2, m2), rc, rr = both(params, ref, batch)
    assert float(l1) == pytest.approx(float(l2), rel=1e-6) and float(w1) == float(w2) == 8.0
    # independent check of the pair forward: per-row log-probs from the un-interleaved batch
    lp = logprob_fn(
        ref, batch["chosen_input_ids"], batch["chosen_attention_mask"], batch["chosen_loss_mask"]
    )
    np.testing.assert_allclose(np.asarray(rc), np.asarray(jnp.sum(lp, -1)), rtol=1e-5)
    pc, pr = float(m1["logps_chosen"]), float(m1["logps_rejected"])
    h = (
        np.asarray(
            jnp.sum(
                logprob_fn(
                    params,
                    batch["chosen_input_ids"],
                    batch["chosen_attention_mask"],
                    batch["chosen_loss_mask"],
                ),
                -1,
            )
        )
        - np.asarray(rc)
    ) - (
        np.asarray(
            jnp.sum(
                logprob_fn(
                    params,
                    batch["rejected_input_ids"],
                    batch["rejected_attention_mask"],
                    batch["rejected_loss_mask"],
                ),
                -1,
            )
        )
        - np.asarray(rr)
    )
    np.testing.assert_allclose(float(l1), np.mean(np.logaddexp(0.0, -0.1 * h)), rtol=1e-5)
    assert np.isfinite(pc) and np.isfinite(pr)
    assert not offline.needs_reference(losses.get("simpo")) and offline.needs_reference(dpo)
    with pytest.raises(KeyError, match="ref_chosen_logps"):
        offline.preference_loss(
            logprob_fn, params, batch, loss_fn=dpo, loss_kwargs={}, reference_mode="precomputed"
        )


def _load_config(name, arg):
    return config_files.get_config(lib.REPO / "configs" / f"{name}.py", arg)


# Golden first-step loss of configs/sft.py:tiny on 8 CPU devices (the loss before any update, so
# optimizer settings do not move it; ~log(vocab) at init). If a deliberate change to the model
# init, tiny tokenizer or synthetic data moves it, re-run `python -m experiments.train --config
# configs/sft.py:tiny --workdir /tmp/g --config.num_train_steps=3`, read step 1 of
# /tmp/g/metrics.jsonl, check it is near log(vocab_size), and update it here.
GOLDEN_SFT_STEP1 = 5.546169757843018


def test_nan_guard_stops_with_step_and_metric_and_never_checkpoints_nan(tmp_path):
    config = _load_config("sft", "tiny")
    with config.unlocked():
        config.num_train_steps = 4
        config.checkpoint_every_steps = 1
        config.checkpoint_async = False
        config.progress_bar = False
        # warmup from 0: step 1 applies lr=0 (finite, checkpointed), step 2 lr=5e29 blows up
        config.optim.warmup_steps = 2
        config.optim.schedule = "constant"
        config.optim.learning_rate = 1e30
        config.optim.max_grad_norm = 0.0
    with pytest.raises(metrics.NonFiniteError, match=r"at step 2: .*param_norm=inf"):
        learners.run(config, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1]
    assert rows[0]["loss"] == pytest.approx(GOLDEN_SFT_STEP1, abs=2e-6), (
        "tiny SFT first-step loss changed: see the comment on GOLDEN_SFT_STEP1"
    )
    assert {"loss", "grad_norm", "learning_rate", "tokens_per_s"} <= set(rows[0])
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
