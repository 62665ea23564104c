"""Training configs: arg strings, required keys, locking, typed overrides, early validation."""
import pathlib
import subprocess
import sys

import pytest

from alignment.engine import config as config_files
from absl import flags
from ml_collections import config_flags

from alignment import train

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ["sft", "dpo"]


def _load(name):
    return config_files.load_file(REPO / "configs" / f"{name}.py")


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "tiny"])
def test_every_config_has_the_contract_keys_and_validates(name, arg):
    config = _load(name).get_config(arg)
    for key in ("num_train_steps", "checkpoint_every_steps", "seed"):
        assert isinstance(config[key], int)
    assert set(config.mesh.keys()) == {"data", "fsdp", "tensor"}
    if arg == "tiny":
        train.validate_config(config)
        assert config.tokenizer == "tiny" and config.model.preset == "tiny"


def test_arg_string_selects_loss_and_its_knobs():
    dpo = _load("dpo")
    c = dpo.get_config("tiny,loss=ipo")
    assert c.loss == "ipo" and c.loss_kwargs.length_normalize is True and c.loss_kwargs.beta == 0.1
    c = dpo.get_config("loss=simpo,reference=precomputed")
    assert c.loss_kwargs.gamma == 0.5 and c.reference.mode == "precomputed"
    with pytest.raises(ValueError, match="unknown config argument 'tiyn'"):
        dpo.get_config("tiyn")
    with pytest.raises(ValueError, match="not a registered|Unknown|unknown|valid"):
        dpo.get_config("loss=nope")


def test_config_is_locked_and_typed():
    c = _load("dpo").get_config("tiny")
    with pytest.raises(AttributeError):
        c.num_train_step = 3  # misspelt key
    with pytest.raises(TypeError):
        c.num_train_steps = "many"
    with pytest.raises(AttributeError):
        c.optim.lr = 1.0


def _parse(argv):
    fv = flags.FlagValues()
    argv = ["prog", f"--config={REPO}/configs/dpo.py:tiny", *argv]
    # config_flags finds the override flags in argv (sys.argv by default)
    config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv(argv)
    return fv.config


def test_flag_overrides_are_typed_and_unknown_keys_fail():
    c = _parse(["--config.num_train_steps=7", "--config.loss_kwargs.beta=0.5", "--config.mesh.fsdp=4"])
    assert (c.num_train_steps, c.loss_kwargs.beta, c.mesh.fsdp) == (7, 0.5, 4)
    with pytest.raises(flags.Error):
        _parse(["--config.num_train_steps=abc"])
    with pytest.raises((flags.Error, AttributeError, KeyError), match="no_such_key"):
        _parse(["--config.no_such_key=1"])


def _with(config, **updates):
    config = config.copy_and_resolve_references()
    with config.unlocked():  # some cases add a key (e.g. loss_kwargs.beta to an sft config)
        return config_files.override(config, updates)


@pytest.mark.parametrize("updates, match", [
    ({"loss": "dpo"}, "is a preference loss; kind='sft'"),
    ({"loss": "iq_mle"}, "requires \\['logits', 'targets'\\]"),
    ({"reference.mode": "cached"}, "reference.mode must be one of"),
    ({"global_batch_size": 6, "grad_accum_steps": 4}, "must divide evenly"),
    ({"num_train_steps": 0}, "num_train_steps must be positive"),
    ({"distributed.num_processes": 2}, "coordinator_address"),
    ({"loss_kwargs.beta": 0.1}, "not arguments of loss 'sft'"),
    ({"eval_every_steps": -1}, "eval_every_steps must be >= 0"),
    ({"eval_batches": 0}, "eval_batches must be positive"),
    ({"task": "sortnig"}, "config.task='sortnig' is not an embedded task"),
])
def test_validate_config_fails_early_with_the_key_named(updates, match):
    with pytest.raises(ValueError, match=match):
        train.validate_config(_with(_load("sft").get_config("tiny"), **updates))


def test_dpo_token_level_and_reference_checks():
    dpo = _load("dpo")
    with pytest.raises(ValueError, match="per-token reference"):
        train.validate_config(dpo.get_config("tiny,loss=token_dpo,reference=precomputed"))
    train.validate_config(dpo.get_config("tiny,loss=token_dpo"))


def test_cli_rejects_bad_override_before_building_anything(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config", "configs/sft.py:tiny", "--workdir",
         str(tmp_path / "w"), "--config.num_train_steps=abc"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "num_train_steps" in proc.stderr
    assert not (tmp_path / "w").exists()
