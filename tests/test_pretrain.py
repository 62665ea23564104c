"""Tiny task bases (alignment.pretrain): BPE tokenizer, determinism, cache reuse, shape checks,
and the base shipped in alignment/assets/bases/."""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from alignment import models, pretrain, tasks
from alignment.models.logprobs import model_logprobs
from alignment.tokenizer import Tokenizer
from configs import pretrain as pretrain_config


def _tiny(cache_dir, **overrides):
    """configs/pretrain.py:sentiment,tiny with dotted-key overrides (as `--config.a.b=v`)."""
    config = pretrain_config.get_config("sentiment,tiny")
    config.update_from_flattened_dict({"cache_dir": str(cache_dir), **overrides})
    return config


def _tensors(folder):
    out = {}
    for f in sorted(pathlib.Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    config = _tiny(root / "a")
    return config, pretrain.build_base(config)


def test_tiny_pretrain_is_deterministic_for_a_seed(tiny_base, tmp_path):
    config, first = tiny_base
    second = pretrain.build_base(_tiny(tmp_path / "b"))
    assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()
    a, b = _tensors(first), _tensors(second)
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # the run learned something: the loss went down over its few steps
    rows = [
        json.loads(line) for line in (first / "pretrain_metrics.jsonl").read_text().splitlines()
    ]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0], losses


def test_another_seed_gives_another_base(tiny_base, tmp_path):
    config, first = tiny_base
    other = _tiny(tmp_path / "c", seed=1)
    assert pretrain.config_hash(other) != pretrain.config_hash(config)
    assert pretrain.cache_dir(_tiny("")).name.startswith("sentiment-")
    # the seed reaches the corpus (and the initialisation, via train.seed)
    assert pretrain.corpus(other) != pretrain.corpus(config)
    assert pretrain.train_config(other, tokenizer_dir="t", init_dir="i", data_dir="d").seed == 1


def test_cache_is_reused_without_training(tiny_base, monkeypatch):
    config, path = tiny_base
    stamp = (path / "model.safetensors").stat().st_mtime_ns

    def refuse(*args, **kwargs):
        raise AssertionError("build_base retrained a base that is in the cache")

    monkeypatch.setattr(pretrain, "pretrain", refuse)
    assert pretrain.resolve_base(config) == (path, "cache")
    assert pretrain.build_base(config) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_hash_covers_what_the_base_computes_only(tmp_path):
    base = _tiny("")
    h = pretrain.config_hash(base)
    # logging and where the base is stored do not change the base
    assert (
        pretrain.config_hash(
            _tiny(tmp_path / "x", **{"train.progress_bar": True, "train.log_every_steps": 3})
        )
        == h
    )
    for key, value in (
        ("model.d_model", 48),
        ("train.num_train_steps", 7),
        ("train.optim.learning_rate", 1e-3),
        ("corpus.demos_per_prompt", 2),
        ("tokenizer.vocab_size", 280),
        ("seed", 3),
    ):
        assert pretrain.config_hash(_tiny("", **{key: value})) != h, key


def test_cache_holding_another_shape_is_a_clear_error(tiny_base):
    config, path = tiny_base
    with pytest.raises(ValueError, match=r"d_model=32.*d_model=48") as e:
        pretrain.build_base(_tiny(path, **{"model.d_model": 48}))
    assert str(path) in str(e.value)
    with pytest.raises(ValueError, match="n_layers"):
        pretrain.build_base(_tiny(path, **{"model.n_layers": 3}))


def test_folder_without_a_model_is_not_overwritten(tmp_path):
    (tmp_path / "junk.txt").write_text("mine")
    with pytest.raises(ValueError, match="no config.json"):
        pretrain.build_base(_tiny(tmp_path))
    assert (tmp_path / "junk.txt").read_text() == "mine"


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown task 'nosuch'.*sentiment"):
        pretrain_config.get_config("nosuch")
    config = _tiny("", task="nosuch")
    with pytest.raises(ValueError, match="unknown task 'nosuch'"):
        pretrain.build_base(config)


def test_bpe_tokenizer_round_trips_the_corpus():
    config = _tiny("")
    docs = pretrain.corpus(config)
    assert len(docs) == config.corpus.num_prompts * (1 + config.corpus.demos_per_prompt)
    tok = pretrain.train_tokenizer(docs, vocab_size=300, min_frequency=2)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert 256 + 3 < tok.vocab_size <= 300
    for doc in docs[::37]:
        ids = tok.encode(doc)
        assert tok.decode(ids) == doc
        assert tok.encode(doc, add_special_tokens=True) == [tok.bos_id] + ids
    assert (
        tok.decode(tok.encode("naïve café ☕")) == "naïve café ☕"
    )  # byte level: nothing is unknown
    with pytest.raises(ValueError, match="vocab_size=100"):
        pretrain.train_tokenizer(docs, vocab_size=100, min_frequency=2)


# ----------------------------------------------------------------------------- the shipped base


def test_shipped_sentiment_base_loads_and_matches_its_config():
    """If this fails after changing configs/pretrain.py, rebuild the shipped base with the command in
    alignment/assets/bases/sentiment/README.md (the config hash no longer matches the shipped one)."""
    config = pretrain_config.get_config("sentiment")
    path = pretrain.shipped_base(config)
    assert path is not None, (
        "no shipped base for configs/pretrain.py:sentiment (or its hash changed)"
    )
    assert pretrain.resolve_base(config)[1] in ("shipped", "cache")
    tok = Tokenizer.from_pretrained(path)
    pretrain.check_base(path, config, vocab_size=tok.vocab_size)
    model = models.from_pretrained(path)
    m = config.model
    assert (model.config.d_model, model.config.n_layers, model.config.d_ff) == (
        m.d_model,
        m.n_layers,
        m.d_ff,
    )
    assert 1e6 * 0.5 < model.config.num_params() < 10e6
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size < 8 * 2**20, f"shipped base is {size / 2**20:.1f} MiB"
    # it was trained: a task sentence is far more likely than the same words shuffled
    prompt, response = tasks.get_task("sentiment").demonstrations("test", 1, seed=0)[0]
    words = (prompt + response).split(" ")
    shuffled = " ".join(words[::2] + words[1::2])

    def logp(text):
        ids = [tok.bos_id] + tok.encode(text) + [tok.eos_id]
        x = jnp.asarray([ids])
        mask = jnp.ones_like(x)
        return float(model_logprobs(model, x, mask, mask.at[:, 0].set(0)).sum())

    assert logp(prompt + response) > logp(shuffled) + 10.0
