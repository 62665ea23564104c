"""Benchmark one preference (DPO-family) train step: time, tokens/s, FLOPs, peak memory.

    python -m experiments.bench_train --preset tiny --batch 8 --seq 128 --reference precomputed

Prints the compiled step's FLOPs from XLA's `cost_analysis()` next to the analytic count
`6 * N * tokens + attention` (N = parameters used in matmuls, i.e. without the input embedding
table of an untied model nor learned position tables; attention `12 * L * T^2 * H * hd` per
sequence for forward+backward),
plus `2 * N * tokens + forward attention` for an in-step reference, and the compiled peak memory
from `memory_analysis()`. Runs on whatever devices JAX sees, with an FSDP mesh over all of them.

XLA's cost analysis counts a while-loop body once whatever its trip count, so the FLOPs figure is
only complete when `--chunk_size >= --seq` (one log-prob chunk); the result says so otherwise.
`--no_logprob_remat` keeps the chunk logits for the backward pass instead of recomputing them.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import ml_collections
import numpy as np

from alignment import engine, losses, models, optim, sharding
from alignment.learners import offline


def _parse(argv):
    p = argparse.ArgumentParser(prog="bench_train", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab_size", type=int, default=0, help="0 = the preset's vocabulary")
    p.add_argument("--batch", type=int, default=8, help="pairs per step")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--loss", default="dpo")
    p.add_argument("--reference", choices=("precomputed", "in_step"), default="precomputed")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--chunk_size", type=int, default=512)
    p.add_argument(
        "--no_logprob_remat",
        action="store_true",
        help="keep the chunked logits for the backward pass instead of recomputing them",
    )
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--scan_layers", action="store_true")
    p.add_argument("--remat_policy", default="none")
    return p.parse_args(argv)


def analytic_flops(
    cfg, n_matmul_params: int, batch_pairs: int, seq: int, in_step_reference: bool
) -> dict:
    rows = 2 * batch_pairs  # chosen + rejected
    tokens = rows * seq
    attn_fwd = 4 * cfg.n_layers * seq * seq * cfg.n_heads * cfg.head_dim * rows  # QK^T and AV
    train = 6 * n_matmul_params * tokens + 3 * attn_fwd
    ref = (2 * n_matmul_params * tokens + attn_fwd) if in_step_reference else 0
    return {"train": train, "reference": ref, "total": train + ref, "tokens": tokens}


def bench_train(argv=None) -> dict:
    args = _parse(argv)

    overrides = dict(dtype=args.dtype, scan_layers=args.scan_layers, remat_policy=args.remat_policy)
    if args.vocab_size:
        overrides["vocab_size"] = args.vocab_size
    cfg = models.get_preset(args.preset, **overrides)
    if cfg.max_seq_len < args.seq:
        cfg = models.get_preset(args.preset, max_seq_len=args.seq, **overrides)
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    graphdef, params, shardings = engine.init_params(cfg, mesh, seed=0)
    ocfg = ml_collections.ConfigDict(
        dict(
            name="adamw",
            learning_rate=1e-5,
            schedule="cosine",
            warmup_steps=0,
            end_lr_factor=0.1,
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            weight_decay=0.0,
            decay_min_ndim=2,
            no_decay_regex="(norm|bias|embed)",
            max_grad_norm=1.0,
            freeze_regex="",
        )
    )
    tx = optim.make_optimizer(ocfg, params, 1000)
    loss = losses.get(args.loss)
    in_step = args.reference == "in_step" and offline.needs_reference(loss)
    state, st_sh = engine.create_train_state(
        params, shardings, tx, mesh, seed=0, with_reference=in_step
    )
    logprob_fn = engine.make_logprob_fn(graphdef, args.chunk_size, remat=not args.no_logprob_remat)
    loss_fn = lambda p, ref, b: offline.preference_loss(  # noqa: E731
        logprob_fn,
        p,
        b,
        loss_fn=loss,
        loss_kwargs={},
        reference_mode=args.reference,
        ref_params=ref,
    )

    rng = np.random.RandomState(0)
    B, S = args.batch, args.seq
    batch = {}
    for side in ("chosen", "rejected"):
        batch[f"{side}_input_ids"] = rng.randint(1, cfg.vocab_size, (B, S)).astype(np.int32)
        batch[f"{side}_attention_mask"] = np.ones((B, S), np.int32)
        lm = np.ones((B, S), np.int32)
        lm[:, : S // 4] = 0
        batch[f"{side}_loss_mask"] = lm
    if args.reference == "precomputed":
        batch["ref_chosen_logps"] = rng.randn(B).astype(np.float32) - 50
        batch["ref_rejected_logps"] = rng.randn(B).astype(np.float32) - 50
    b_sh = engine.batch_shardings_for(batch, mesh)
    step = engine.make_train_step(
        loss_fn, tx, state_shardings=st_sh, batch_shardings=b_sh, mesh=mesh
    )
    gbatch = engine.to_global(batch, b_sh)

    t0 = time.perf_counter()
    compiled = step.lower(state, gbatch).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", float("nan"))) * (
        1 if jax.device_count() == 1 else jax.device_count()
    )
    mem = compiled.memory_analysis()
    peak = None
    if mem is not None:
        peak = (
            getattr(mem, "temp_size_in_bytes", 0)
            + getattr(mem, "argument_size_in_bytes", 0)
            + getattr(mem, "output_size_in_bytes", 0)
            - getattr(mem, "alias_size_in_bytes", 0)
        )

    n_total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    n_embed = cfg.vocab_size * cfg.d_model
    n_matmul = n_total if cfg.tie_embeddings else n_total - n_embed
    if cfg.position_embedding == "learned":  # a lookup table, no matmul
        n_matmul -= cfg.max_seq_len * cfg.d_model
    ana = analytic_flops(cfg, n_matmul, B, S, in_step)

    state, m = step(state, gbatch)  # warm-up
    jax.block_until_ready(m)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        state, m = step(state, gbatch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    result = {
        "preset": args.preset,
        "loss": args.loss,
        "reference": args.reference,
        "logprob_remat": not args.no_logprob_remat,
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
        "batch_pairs": B,
        "seq": S,
        "params": n_total,
        "compile_s": compile_s,
        "step_s": step_s,
        "tokens_per_s": ana["tokens"] / step_s,
        "xla_flops": xla_flops,
        "analytic_flops": ana["total"],
        "flops_ratio": xla_flops / ana["total"],
        "peak_bytes": peak,
        "loss_value": float(m["loss"]),
    }
    if args.chunk_size < S:
        result["flops_note"] = (
            f"xla_flops counts 1 of {-(-S // args.chunk_size)} log-prob chunks "
            "(a loop body is costed once); use --chunk_size >= --seq for the FLOPs figure"
        )
    width = max(len(k) for k in result)
    for k, v in result.items():
        shown = f"{v:.4g}" if isinstance(v, float) else v
        print(f"{k:<{width}}  {shown}")
    return result


if __name__ == "__main__":
    bench_train(sys.argv[1:])
