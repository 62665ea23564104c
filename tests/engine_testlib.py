"""Helpers shared by the engine tests (`import engine_testlib`; conftest.py puts tests/ on
sys.path), one module object so that cached runs are shared across test files."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from alignment import models, optim

REPO = pathlib.Path(__file__).resolve().parents[1]


def optim_cfg(**kw):
    base = dict(
        name="adamw",
        learning_rate=1e-2,
        schedule="cosine",
        warmup_steps=0,
        end_lr_factor=0.1,
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        weight_decay=0.01,
        decay_min_ndim=2,
        no_decay_regex=r"(norm|bias|embed)",
        max_grad_norm=1.0,
        freeze_regex="",
    )
    base.update(kw)
    return ml_collections.ConfigDict(base)


def tiny_model(vocab_size=64):
    return models.get_preset(
        "tiny",
        vocab_size=vocab_size,
        d_model=32,
        d_ff=64,
        head_dim=8,
        n_heads=4,
        n_kv_heads=2,
        n_layers=2,
        max_seq_len=32,
    )


def random_pairs(seed=0, batch=8, length=32, vocab=64):
    """Preference batch with varied (right-padded) lengths and prompt lengths."""
    rng = np.random.RandomState(seed)
    out = {}
    for side in ("chosen", "rejected"):
        ids = rng.randint(1, vocab, (batch, length)).astype(np.int32)
        n = rng.randint(length // 2, length + 1, batch)
        p = rng.randint(2, length // 3, batch)
        t = np.arange(length)[None]
        attn = (t < n[:, None]).astype(np.int32)
        out[f"{side}_input_ids"] = ids * attn
        out[f"{side}_attention_mask"] = attn
        out[f"{side}_loss_mask"] = attn * (t >= p[:, None]).astype(np.int32)
    return out


def random_sft(seed=0, batch=8, length=32, vocab=64):
    pairs = random_pairs(seed, batch, length, vocab)
    return {
        "input_ids": pairs["chosen_input_ids"],
        "attention_mask": pairs["chosen_attention_mask"],
        "loss_mask": pairs["chosen_loss_mask"],
    }


def local_dpo(
    *, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1
):
    """Plain DPO written here so the engine tests do not depend on the loss library's details."""
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    losses = -jax.nn.log_sigmoid(beta * h)
    return jnp.mean(losses), {"losses": losses, "reward_accuracy": (h > 0).astype(jnp.float32)}


def run_train_cli(
    workdir, *overrides, devices=8, env_extra=None, config="configs/dpo.py:tiny", wait=True
):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env.update(env_extra or {})
    cmd = [
        sys.executable,
        "-m",
        "experiments.train",
        "--config",
        config,
        "--workdir",
        str(workdir),
        "--config.progress_bar=False",
        "--config.tensorboard=False",
        *overrides,
    ]
    if not wait:
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def final_params(workdir):
    """Parameters of the newest checkpoint in `workdir`, as numpy arrays keyed by path."""
    ckdir = pathlib.Path(workdir) / "checkpoints"
    step = max(int(p.name) for p in ckdir.iterdir() if p.name.isdigit())
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as ck:
        meta = ck.metadata(ckdir / str(step) / "state")
        meta = getattr(meta, "item_metadata", meta)
        # restore onto one local device whatever topology (processes, mesh) wrote it
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
            meta,
            is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"),
        )
        tree = ck.restore(ckdir / str(step) / "state", target)
    flat = jax.tree_util.tree_flatten_with_path(tree["params"])[0]
    return step, {optim.path_str(p): np.asarray(v) for p, v in flat}


_REFERENCE_RUNS: dict = {}


def reference_dpo_run(root: str, steps: int):
    """One uninterrupted tiny DPO run on 8 devices, made once per pytest session and number of
    steps (shared by the resume and distributed tests; `root` is used by the first caller)."""
    if steps not in _REFERENCE_RUNS:
        workdir = pathlib.Path(root) / f"reference_{steps}"
        run_train_cli(
            workdir, f"--config.num_train_steps={steps}", f"--config.checkpoint_every_steps={steps}"
        )
        _REFERENCE_RUNS[steps] = workdir
    return _REFERENCE_RUNS[steps]
