"""The engine's held-out evaluation, Hugging Face export / init_from round trip, run.json for
`experiments.evaluate`, and bf16 compute over float32 master weights.

One tiny SFT run (module fixture) feeds the eval, export and evaluator tests; a 1-step DPO run
starts from its export."""

import json
import math
import os

import engine_testlib as lib  # tests/ is on sys.path (conftest.py)
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignment import data, learners, losses, models, optim, sharding
from alignment import engine as T
from alignment.engine import config as config_files
from alignment.learners import offline
from alignment.tokenizer import Tokenizer, tiny_tokenizer
from experiments import evaluate

SFT_STEPS, EVAL_EVERY = 4, 3  # eval at step 3 (a multiple) and step 4 (the last step)


def _config(name, arg="tiny", **updates):
    return config_files.get_config(
        lib.REPO / "configs" / f"{name}.py",
        arg,
        {"progress_bar": False, "checkpoint_async": False, **updates},
    )


def _rows(workdir):
    return {
        r["step"]: r
        for r in (json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")))
    }


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("sft_export"))
    config = _config(
        "sft",
        num_train_steps=SFT_STEPS,
        checkpoint_every_steps=SFT_STEPS,
        export_hf=True,
        eval_every_steps=EVAL_EVERY,
        eval_batches=2,
    )
    state = learners.run(config, workdir)
    graphdef, _ = T.abstract_model(T.model_config(config, tiny_tokenizer().vocab_size))
    return {
        "workdir": workdir,
        "config": config,
        "graphdef": graphdef,
        "params": jax.device_get(state.params),
    }


def _tokens(batch=2, length=12, vocab=250):
    return np.random.RandomState(0).randint(3, vocab, (batch, length)).astype(np.int32)


def test_eval_loss_is_logged_at_eval_steps_and_equals_a_manual_forward(sft_run):
    rows = _rows(sft_run["workdir"])
    assert sorted(rows) == list(range(1, SFT_STEPS + 1))
    assert [s for s in rows if "eval_loss" in rows[s]] == [3, 4]
    # a manual, unsharded forward of the same held-out batches with the final params
    config, params = sft_run["config"], sft_run["params"]
    size = config.global_batch_size // config.grad_accum_steps
    it = data.make_iterator(
        config.data,
        tiny_tokenizer(),
        kind="sft",
        split="eval",
        global_batch_size=size,
        seed=config.data.seed,
    )
    logprob_fn = T.make_logprob_fn(sft_run["graphdef"], chunk_size=16)
    forward = jax.jit(
        lambda p, b: offline.sft_loss(logprob_fn, p, b, loss_fn=losses.get("sft"), loss_kwargs={})
    )
    total = weight = 0.0
    for _ in range(config.eval_batches):
        loss, w, _ = forward(params, next(it))
        total, weight = total + float(loss) * float(w), weight + float(w)
    last = rows[SFT_STEPS]
    assert last["eval_loss"] == pytest.approx(total / weight, rel=1e-5)
    assert last["eval_nll"] == pytest.approx(last["eval_loss"], rel=1e-6)
    # held-out batches, not the train batch; and the params moved between the two evaluations
    assert last["eval_loss"] != pytest.approx(last["loss"], rel=1e-3)
    assert rows[3]["eval_loss"] != pytest.approx(last["eval_loss"], rel=1e-4)
    events = [
        f for f in os.listdir(os.path.join(sft_run["workdir"], "tensorboard")) if "tfevents" in f
    ]
    assert any(
        b"eval_loss" in open(os.path.join(sft_run["workdir"], "tensorboard", f), "rb").read()
        for f in events
    )


def test_hf_export_matches_final_params_in_our_loader_and_in_transformers(sft_run):
    hf = os.path.join(sft_run["workdir"], "hf")
    ids = _tokens()
    ours = np.asarray(models.merge(sft_run["graphdef"], sft_run["params"])(jnp.asarray(ids)))
    loaded = np.asarray(models.from_pretrained(hf)(jnp.asarray(ids)))
    np.testing.assert_allclose(loaded, ours, atol=1e-6, rtol=0)
    tok = Tokenizer.from_pretrained(hf)  # the tokenizer travels with the export
    assert tok.encode("sort: 3 1 2\n") == tiny_tokenizer().encode("sort: 3 1 2\n")
    assert tok.eos_id == tiny_tokenizer().eos_id
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    with torch.no_grad():
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
        theirs = hf_model(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)


def test_run_record_and_reference_export_of_a_random_init(sft_run):
    workdir, config = sft_run["workdir"], sft_run["config"]
    record = json.load(open(os.path.join(workdir, "run.json")))
    assert record["reference"] == os.path.join(workdir, "reference_hf")
    assert (record["task"], record["tokenizer"], record["loss"], record["kind"]) == (
        "",
        "tiny",
        "sft",
        "sft",
    )
    assert record["config"]["num_train_steps"] == SFT_STEPS
    # the reference export is the initial weights: a fresh init with the run's seed
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    model_cfg = T.model_config(config, tiny_tokenizer().vocab_size)
    _, init, _ = T.init_params(model_cfg, mesh, config.seed)
    ref = nnx.to_pure_dict(nnx.state(models.from_pretrained(record["reference"]), nnx.Param))
    assert jax.tree.structure(ref) == jax.tree.structure(init)
    jax.tree.map(np.testing.assert_array_equal, ref, jax.device_get(init))


def test_evaluate_cli_runs_on_the_tiny_run(sft_run):
    workdir = sft_run["workdir"]
    assert (
        evaluate.main(
            [
                "--workdir",
                workdir,
                "--task",
                "sorting",
                "--num_prompts",
                "2",
                "--samples_per_prompt",
                "2",
                "--max_new_tokens",
                "6",
                "--num_examples",
                "1",
                "--batch_size",
                "4",
            ]
        )
        == 0
    )
    result = json.load(open(os.path.join(workdir, "eval.json")))
    assert result["task"] == "sorting" and result["reference"] == os.path.join(
        workdir, "reference_hf"
    )
    assert result["policy"] == os.path.join(workdir, "hf") and result["tokenizer"] == os.path.join(
        workdir, "hf"
    )
    assert math.isfinite(result["kl"]) and 0.0 <= result["win_rate"] <= 1.0


def test_dpo_init_from_the_export_starts_from_those_params_in_bf16_compute(sft_run, tmp_path):
    hf = os.path.join(sft_run["workdir"], "hf")
    # bf16 compute over float32 master weights, loaded from the float32 export
    config = _config(
        "dpo",
        num_train_steps=2,
        checkpoint_every_steps=2,
        eval_every_steps=0,
        tensorboard=False,
        **{"model.init_from": hf, "model.dtype": "bfloat16"},
    )
    state = learners.run(config, str(tmp_path))
    # in-step reference = the loaded params, so the policy/reference margin is exactly zero
    assert _rows(tmp_path)[1]["loss"] == pytest.approx(math.log(2.0), abs=1e-6)
    ref = jax.device_get(state.ref_params)
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(ref)[0], jax.tree.leaves(sft_run["params"])
    ):
        assert a.dtype == np.float32, path
        np.testing.assert_array_equal(a, b, err_msg=optim.path_str(path))
    # master weights and Adam moments stay float32 through bf16-compute updates (step 2 has lr > 0)
    params = jax.device_get(state.params)
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(state.opt_state) if x.ndim} == {np.dtype("float32")}
    assert all(
        not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref))
    )
    assert json.load(open(tmp_path / "run.json"))["reference"] == hf


def test_bf16_compute_loss_is_close_to_float32_on_the_same_master_weights(sft_run):
    # the engine's path for model.dtype=bfloat16, param_dtype=float32: same params, bf16 graph
    config, params = sft_run["config"], sft_run["params"]
    cfg32 = T.model_config(config, tiny_tokenizer().vocab_size)
    graphdef16, _ = T.abstract_model(cfg32.replace(dtype="bfloat16"))
    batch = lib.random_sft(seed=5, vocab=tiny_tokenizer().vocab_size)

    def loss(graphdef):
        logprob_fn = T.make_logprob_fn(graphdef, chunk_size=16)
        fn = jax.jit(
            lambda p, b: offline.sft_loss(
                logprob_fn, p, b, loss_fn=losses.get("sft"), loss_kwargs={}
            )[0]
        )
        return float(fn(params, batch))

    loss32, loss16 = loss(sft_run["graphdef"]), loss(graphdef16)
    assert loss16 == pytest.approx(loss32, rel=2e-2) and loss16 != loss32  # bf16 really ran
