"""Micro-benchmarks.

    python -m experiments.bench model [--preset tiny] [--batch 8] [--seq 256] [--new-tokens 64]

`model` prints, for one model preset on the available devices:
- forward throughput (tokens/s, and model FLOPs utilisation on accelerators with a known peak),
- the compiled peak temporary memory of token log-probs, chunked vs naive [B, T, V] float32
  logits, forward and forward+backward (`jax.jit(...).lower(...).compile().memory_analysis()`),
- KV-cache generation throughput of `alignment.sampling.sample_arrays` (new tokens/s, with and
  without the prefill of a prompt of half the sequence length).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from alignment import models, sharding
from alignment.models.logprobs import naive_token_logprobs, token_logprobs
from alignment.sampling import SamplingParams, left_pad, sample_arrays
from experiments.bench_train import bench_train

# Dense bf16 peak FLOP/s by device kind (substring match), for MFU.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
    "TPU v6": 918e12,
}


def _peak_flops(device) -> float | None:
    kind = device.device_kind
    return next((v for k, v in PEAK_FLOPS.items() if k.lower() in kind.lower()), None)


def forward_flops_per_token(config, seq_len: int) -> float:
    """2 x matmul parameters (unembedding included, embedding lookup not) + causal attention
    scores and values: 2 * 2 * n_layers * (seq_len / 2) * n_heads * head_dim."""
    matmul_params = config.num_params() - config.vocab_size * config.d_model
    if config.tie_embeddings:
        matmul_params += config.vocab_size * config.d_model
    attention = 2 * config.n_layers * seq_len * config.n_heads * config.head_dim
    return 2.0 * matmul_params + attention


def _time(fn, steps: int) -> float:
    """Seconds per call after one warm-up (compile) call."""
    jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def bench_model(args) -> dict:
    overrides = dict(dtype=args.dtype, param_dtype=args.param_dtype, scan_layers=args.scan_layers)
    if args.vocab_size is not None:
        overrides["vocab_size"] = args.vocab_size
    if args.seq + args.new_tokens > models.get_preset(args.preset).max_seq_len:
        overrides["max_seq_len"] = args.seq + args.new_tokens
    config = models.get_preset(args.preset, **overrides)
    devices = jax.devices()[: args.devices] if args.devices else jax.devices()
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1}, devices=devices)
    model = models.create_sharded(config, mesh, seed=0)
    graphdef, state = models.split(model)
    device = devices[0]
    b, t = args.batch, args.seq
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, config.vocab_size, (b, t)), jnp.int32)
    if b % len(devices) == 0:  # data-parallel inputs over the (data, fsdp) axes, as in training
        ids = jax.device_put(ids, sharding.batch_sharding(mesh))
    result = {
        "preset": args.preset,
        "device": f"{len(devices)} x {device.device_kind}",
        "params": config.num_params(),
        "batch": b,
        "seq": t,
        "dtype": config.dtype,
    }

    # Forward: logits for every position (what SFT / log-prob passes pay).
    forward = jax.jit(lambda state, ids: models.merge(graphdef, state)(ids))
    seconds = _time(lambda: forward(state, ids), args.steps)
    result["forward_tokens_per_s"] = b * t / seconds
    peak = _peak_flops(device)
    if peak is not None:
        result["forward_mfu"] = (
            forward_flops_per_token(config, t) * b * t / seconds / peak / len(devices)
        )

    # Log-prob memory: from hidden states and the unembedding, chunked vs naive logits.
    hidden = jax.ShapeDtypeStruct((b, t, config.d_model), jnp.dtype(config.dtype))
    unembed = jax.ShapeDtypeStruct((config.d_model, config.vocab_size), jnp.dtype(config.dtype))
    labels = jax.ShapeDtypeStruct((b, t), jnp.int32)

    def chunked(h, w, y):
        return token_logprobs(h, w, y, chunk_size=args.chunk_size).sum()

    def naive(h, w, y):
        logits = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)
        return naive_token_logprobs(logits, y).sum()

    for name, fn in (("chunked", chunked), ("naive", naive)):
        for mode, f in (("fwd", fn), ("fwd_bwd", jax.grad(fn, argnums=(0, 1)))):
            memory = jax.jit(f).lower(hidden, unembed, labels).compile().memory_analysis()
            result[f"logprob_{mode}_temp_mib_{name}"] = memory.temp_size_in_bytes / 2**20
    result["logits_f32_mib"] = b * t * config.vocab_size * 4 / 2**20

    # Decode: prefill half the sequence, then max_new_tokens greedy steps (no stop token).
    prompt_len = max(1, t // 2)
    prompt_ids, prompt_mask, active = left_pad(
        [list(r) for r in np.asarray(ids[:, :prompt_len])], prompt_len, b
    )

    def sampler(new_tokens):
        return jax.jit(
            lambda state, ids, mask: sample_arrays(
                graphdef,
                state,
                ids,
                mask,
                jax.random.key(0),
                max_new_tokens=new_tokens,
                params=SamplingParams(temperature=args.temperature),
                active=active,
            )
        )

    sample, prefill = sampler(args.new_tokens), sampler(1)
    seconds = _time(lambda: sample(state, prompt_ids, prompt_mask), args.steps)
    prefill_seconds = _time(lambda: prefill(state, prompt_ids, prompt_mask), args.steps)
    result["decode_prompt_len"] = prompt_len
    result["decode_new_tokens"] = args.new_tokens
    result["generate_tokens_per_s"] = b * args.new_tokens / seconds  # prefill included
    result["prefill_s"] = prefill_seconds
    # Steady-state decode: the loop's time beyond a prefill + one-token call.
    result["decode_tokens_per_s"] = b * (args.new_tokens - 1) / max(seconds - prefill_seconds, 1e-9)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("model", help="forward tokens/s, log-prob memory, decode tokens/s")
    p.add_argument("--preset", default="tiny", help="alignment.models preset name")
    p.add_argument("--vocab-size", type=int, default=None, help="override the preset's vocabulary")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256, help="forward / log-prob sequence length")
    p.add_argument("--new-tokens", type=int, default=64, help="decode steps")
    p.add_argument("--chunk-size", type=int, default=64, help="log-prob sequence chunk")
    p.add_argument("--dtype", default="float32", help="compute dtype (bfloat16 on accelerators)")
    p.add_argument("--param-dtype", default="float32")
    p.add_argument("--scan-layers", action="store_true")
    p.add_argument("--devices", type=int, default=0, help="use the first N devices (0: all, FSDP)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=3, help="timed repetitions after warm-up")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    p.set_defaults(fn=bench_model)
    # `train` keeps its own flags (experiments/bench_train.py); it is listed here so --help shows it.
    sub.add_parser(
        "train",
        add_help=False,
        help="DPO/SFT step time, tokens/s, XLA vs analytic FLOPs, peak memory",
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        return bench_train(argv[1:])
    args = parser.parse_args(argv)
    result = args.fn(args)
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            print(
                f"{key:<{width}}  {value:,.4g}"
                if isinstance(value, float)
                else f"{key:<{width}}  {value}"
            )
    return result


if __name__ == "__main__":
    main()
