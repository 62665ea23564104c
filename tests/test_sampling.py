"""KV-cache sampler: HF greedy parity, log-prob consistency, seeds, filters, stops, buckets, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignment import models, sharding
from alignment.models.logprobs import model_logprobs
from alignment.sampling import (
    SamplingParams,
    generate,
    left_pad,
    min_p_filter,
    sample_arrays,
    top_k_filter,
    top_p_filter,
)
from alignment.sampling import sampler as sampler_lib
from experiments import bench

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [3]]


# -- processors on hand-made logits ----------------------------------------------------------------


def _kept(logits):
    return np.isfinite(np.asarray(logits)).astype(int).tolist()


def test_top_k_filter():
    logits = jnp.array([[1.0, 4.0, 3.0, 2.0], [0.0, 5.0, 5.0, -1.0]])
    assert _kept(top_k_filter(logits, 2)) == [[0, 1, 1, 0], [0, 1, 1, 0]]
    assert _kept(top_k_filter(logits, 1)) == [[0, 1, 0, 0], [0, 1, 1, 0]]  # ties with the k-th stay
    np.testing.assert_array_equal(top_k_filter(logits, 4), logits)
    kept = top_k_filter(logits, 3)
    np.testing.assert_array_equal(kept[0, 1:], logits[0, 1:])  # surviving logits are unchanged


def test_top_p_filter():
    probs = jnp.array([[0.5, 0.05, 0.3, 0.15], [0.97, 0.01, 0.01, 0.01]])
    logits = jnp.log(probs)
    # Keep a token iff the mass ranked above it is < p: 0.5 | 0.8 | 0.95 | 1.0 cumulative.
    assert _kept(top_p_filter(logits, 0.5)) == [[1, 0, 0, 0], [1, 0, 0, 0]]
    assert _kept(top_p_filter(logits, 0.51)) == [[1, 0, 1, 0], [1, 0, 0, 0]]
    assert _kept(top_p_filter(logits, 0.9)) == [[1, 0, 1, 1], [1, 0, 0, 0]]
    assert _kept(top_p_filter(logits, 0.01)) == [[1, 0, 0, 0], [1, 0, 0, 0]]  # never empty
    np.testing.assert_array_equal(top_p_filter(logits, 1.0), logits)


def test_min_p_filter():
    probs = jnp.array([[0.5, 0.05, 0.3, 0.15]])
    logits = jnp.log(probs) + 3.0  # unnormalised logits give the same answer
    assert _kept(min_p_filter(logits, 0.3)) == [[1, 0, 1, 1]]  # threshold 0.15
    assert _kept(min_p_filter(logits, 0.31)) == [[1, 0, 1, 0]]
    assert _kept(min_p_filter(logits, 1.0)) == [[1, 0, 0, 0]]
    np.testing.assert_array_equal(min_p_filter(logits, 0.0), logits)


def test_sampling_distribution_matches_filtered_softmax():
    # Empirical frequencies of sample_token follow softmax(top-k(logits / T)).
    logits = jnp.log(jnp.array([[0.4, 0.3, 0.2, 0.1]]))
    params = SamplingParams(temperature=2.0, top_k=3)
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = jax.jit(jax.vmap(lambda k: sampler_lib.sample_token(logits, k[None], params)[0]))(keys)
    freq = np.bincount(np.asarray(draws), minlength=4) / 4000
    want = np.asarray(jax.nn.softmax(jnp.log(jnp.array([0.4, 0.3, 0.2])) / 2.0))
    np.testing.assert_allclose(freq[:3], want, atol=0.03)
    assert freq[3] == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(min_p=-0.1), "min_p"),
    ],
)
def test_sampling_params_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


# -- end to end on a tiny model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    # init_std 0.2: peaked logits, so greedy choices are not decided by float noise.
    return models.Transformer(models.get_preset("tiny", init_std=0.2), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def fresh_logprobs(model):
    graphdef, state = models.split(model)

    @jax.jit
    def fn(state, ids, loss_mask):
        return model_logprobs(models.merge(graphdef, state), ids, None, loss_mask, chunk_size=8)

    def run(prompt, completion):
        ids = np.zeros((1, 32), np.int32)  # fixed shape: one compile
        ids[0, : len(prompt) + len(completion)] = prompt + completion
        loss_mask = np.zeros_like(ids)
        loss_mask[0, len(prompt) : len(prompt) + len(completion)] = 1
        return np.asarray(fn(state, ids, loss_mask))[0, len(prompt) : len(prompt) + len(completion)]

    return run


def test_sampled_logprobs_equal_fresh_forward(model, fresh_logprobs):
    out = generate(model, PROMPTS, max_new_tokens=12, temperature=1.3, top_k=50, top_p=0.95, seed=3)
    for prompt, tokens, logprobs in zip(PROMPTS, out.tokens, out.logprobs):
        assert len(tokens) == len(logprobs) == 12
        # Raw-model log-probs (not the tempered/filtered ones): PPO's old log-probs.
        np.testing.assert_allclose(logprobs, fresh_logprobs(prompt, tokens), atol=1e-4)


def test_seed_determinism_and_topk1_equals_greedy(model):
    a = generate(model, PROMPTS, max_new_tokens=8, temperature=1.0, seed=7)
    b = generate(model, PROMPTS, max_new_tokens=8, temperature=1.0, seed=7)
    c = generate(model, PROMPTS, max_new_tokens=8, temperature=1.0, seed=8)
    assert a == b
    assert a.tokens != c.tokens
    greedy = generate(model, PROMPTS, max_new_tokens=8)
    top1 = generate(model, PROMPTS, max_new_tokens=8, temperature=1.0, top_k=1, seed=5)
    assert top1.tokens == greedy.tokens


def test_ragged_batch_equals_one_prompt_at_a_time(model):
    batched = generate(model, PROMPTS, max_new_tokens=8)
    for i, prompt in enumerate(PROMPTS):
        alone = generate(model, [prompt], max_new_tokens=8)
        assert alone.tokens[0] == batched.tokens[i], i
        np.testing.assert_allclose(alone.logprobs[0], batched.logprobs[i], atol=1e-5)


def test_eos_and_stop_ids(model):
    greedy = generate(model, PROMPTS, max_new_tokens=8)
    eos = greedy.tokens[0][2]  # the third token of prompt 0: it stops there, including the EOS
    out = generate(model, PROMPTS, max_new_tokens=8, eos_id=eos)
    for full, got, reason in zip(greedy.tokens, out.tokens, out.finish_reasons):
        want = full[: full.index(eos) + 1] if eos in full else full
        assert got == want
        assert reason == ("stop" if eos in full else "length")
    stop = greedy.tokens[1][1]
    out = generate(model, PROMPTS, max_new_tokens=8, eos_id=eos, stop_ids=[stop])
    assert out.tokens[1] == greedy.tokens[1][:2]


def test_loop_exits_when_all_rows_stopped(model):
    ids, mask, active = left_pad([[5, 6, 7], [5, 6, 7]], 8, 2)
    graphdef, state = models.split(model)
    first = generate(model, [[5, 6, 7]], max_new_tokens=1).tokens[0][0]
    run = jax.jit(
        lambda state, ids, mask, active: sample_arrays(
            graphdef,
            state,
            prompt_ids=ids,
            prompt_mask=mask,
            key=jax.random.key(0),
            max_new_tokens=16,
            stop_ids=(first,),
            active=active,
        )
    )
    out = run(state, ids, mask, active)
    assert int(out.num_steps) == 1 and out.lengths.tolist() == [1, 1]
    assert out.tokens[:, 1:].tolist() == [[0] * 15] * 2  # padding after the stop
    assert out.stopped.tolist() == [True, True] and out.logprobs[:, 1:].tolist() == [[0.0] * 15] * 2
    # An inactive (batch padding) row produces nothing and does not keep the loop alive.
    out = run(state, ids, mask, np.array([True, False]))
    assert out.lengths.tolist() == [1, 0] and int(out.num_steps) == 1


def test_one_compile_per_bucket(model):
    generate(model, [[1, 2, 3]], max_new_tokens=4)
    before = sampler_lib.TRACE_COUNT[0]
    generate(model, [[1, 2, 3, 4, 5]], max_new_tokens=4)  # prompt bucket 8, batch bucket 1
    generate(model, [[9] * 7], max_new_tokens=4)
    assert sampler_lib.TRACE_COUNT[0] == before
    generate(model, [[1, 2], [3], [4, 5, 6]], max_new_tokens=4)  # batch bucket 4: one new compile
    generate(model, [[1], [3], [4, 5, 6, 7]], max_new_tokens=4)
    assert sampler_lib.TRACE_COUNT[0] == before + 1


def test_bad_inputs_raise_clear_errors(model):
    with pytest.raises(ValueError, match="non-empty list"):
        generate(model, [], max_new_tokens=4)
    with pytest.raises(
        ValueError, match=r"prompt 1 has token id 256 at position 2, outside the vocabulary"
    ):
        generate(model, [[1], [1, 2, 256]], max_new_tokens=4)
    with pytest.raises(ValueError, match=r"prompt 0 has token id -1"):
        generate(model, [[-1]], max_new_tokens=4)
    with pytest.raises(ValueError, match=r"prompt 0 has 500 tokens; with max_new_tokens=20 .*=512"):
        generate(model, [[1] * 500], max_new_tokens=20)
    with pytest.raises(ValueError, match="prompt 1 must be a non-empty"):
        generate(model, [[1], []], max_new_tokens=4)
    with pytest.raises(TypeError, match="prompt 0 is a string"):
        generate(model, ["hello"], max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [[1]], max_new_tokens=0)
    with pytest.raises(ValueError, match="eos_id=300"):
        generate(model, [[1]], max_new_tokens=4, eos_id=300)
    graphdef, state = models.split(model)
    with pytest.raises(ValueError, match=r"cache_len=10 < prompt length 8 \+ max_new_tokens 4"):
        sample_arrays(
            graphdef,
            state,
            jnp.ones((1, 8), jnp.int32),
            jnp.ones((1, 8), jnp.int32),
            jax.random.key(0),
            max_new_tokens=4,
            cache_len=10,
        )


# -- greedy parity with Hugging Face generate ------------------------------------------------------


def _hf_model(family):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    common = dict(
        vocab_size=256, bos_token_id=0, eos_token_id=1, pad_token_id=0, initializer_range=0.2
    )
    llama_like = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        **common,
    )
    if family == "llama":
        config = transformers.LlamaConfig(**llama_like)
    elif family == "qwen3":
        config = transformers.Qwen3Config(**llama_like, tie_word_embeddings=True)
    elif family == "gemma2":
        # Window 4 < prompt + new tokens: the sliding window is exercised through the cache.
        config = transformers.Gemma2Config(
            **llama_like,
            sliding_window=4,
            query_pre_attn_scalar=16,
            layer_types=["sliding_attention", "full_attention"],
        )
    else:
        config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, **common)
    hf = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval()
    if family == "gemma2":
        # At init the sqrt(d)-scaled tied embedding dominates the residual and greedy just repeats
        # the last prompt token; larger post-norm scales let the layers (and the window) matter.
        with torch.no_grad():
            for name, param in hf.named_parameters():
                if "post_" in name:
                    param.fill_(3.0)
    return hf


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2", "gpt2"])
def test_greedy_matches_hf_generate(family, tmp_path):
    import torch  # optional heavy dependency: the parity extra (torch, transformers)

    hf = _hf_model(family)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = models.from_pretrained(tmp_path)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [40, 41], [100, 7, 200, 33, 17]]
    new = 10
    out = generate(ours, prompts, max_new_tokens=new, eos_id=1)
    for prompt, tokens in zip(prompts, out.tokens):
        with torch.no_grad():
            ref = hf.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones_like(torch.tensor([prompt])),
                max_new_tokens=new,
                do_sample=False,
                eos_token_id=1,
                pad_token_id=0,
            )
        assert tokens == ref[0, len(prompt) :].tolist(), (family, prompt)
    assert len({t for tokens in out.tokens for t in tokens}) > 3, (
        "degenerate model: test is vacuous"
    )
    assert not math.isnan(sum(sum(lp) for lp in out.logprobs))


def test_bench_model_smoke(capsys):
    result = bench.main(
        [
            "model",
            "--batch",
            "2",
            "--seq",
            "64",
            "--new-tokens",
            "4",
            "--chunk-size",
            "8",
            "--vocab-size",
            "2048",
            "--steps",
            "1",
            "--devices",
            "1",
            "--json",
        ]
    )
    assert result["forward_tokens_per_s"] > 0 and result["decode_tokens_per_s"] > 0
    # 8 of 64 positions per chunk: the chunked temporaries are a fraction of the full logits.
    assert result["logprob_fwd_temp_mib_chunked"] < result["logits_f32_mib"] / 2
    assert result["logprob_fwd_temp_mib_naive"] >= result["logits_f32_mib"]
    assert '"decode_tokens_per_s"' in capsys.readouterr().out


def test_sharded_model_generates_the_same(model):
    mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2}, devices=jax.devices()[:8])
    sharded = models.create_sharded(model.config, mesh, seed=0)
    assert len(jax.tree.leaves(models.split(sharded)[1])[0].sharding.device_set) > 1
    want = generate(model, PROMPTS, max_new_tokens=6, temperature=1.0, seed=2)
    got = generate(sharded, PROMPTS, max_new_tokens=6, temperature=1.0, seed=2)
    assert got.tokens == want.tokens
    np.testing.assert_allclose(
        np.concatenate(got.logprobs), np.concatenate(want.logprobs), atol=1e-4
    )


def test_logits_processor_changes_samples_not_logprobs(model, fresh_logprobs):
    greedy = generate(model, PROMPTS, max_new_tokens=6)
    banned = sorted({t for tokens in greedy.tokens for t in tokens})

    def ban(logits_BxV, tokens_BxN, step):
        del tokens_BxN, step
        return logits_BxV.at[:, jnp.asarray(banned)].set(-jnp.inf)

    out = generate(model, PROMPTS, max_new_tokens=6, logits_processor=ban)
    assert not {t for tokens in out.tokens for t in tokens} & set(banned)
    for prompt, tokens, logprobs in zip(PROMPTS, out.tokens, out.logprobs):
        np.testing.assert_allclose(logprobs, fresh_logprobs(prompt, tokens), atol=1e-4)
