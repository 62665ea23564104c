"""Training configs: arg strings, required keys, locking, typed overrides (unknown keys named with
the nearest known ones), early validation, the schema inside the package, multi-stage configs."""

import ast
import pathlib
import re
import subprocess
import sys

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

import experiments.pipelines  # noqa: F401 - registers rso, per_step, seft
from alignment import learners
from alignment.engine import config as config_lib
from alignment.learners.online_config import online_config

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ["sft", "dpo"]


def _load(name):
    return config_lib.load_file(REPO / "configs" / f"{name}.py")


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "tiny"])
def test_every_config_has_the_contract_keys_and_validates(name, arg):
    config = _load(name).get_config(arg)
    for key in ("num_train_steps", "checkpoint_every_steps", "seed"):
        assert isinstance(config[key], int)
    assert set(config.mesh.keys()) == {"data", "fsdp", "tensor"}
    if arg == "tiny":
        learners.validate(config)
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
    config_flags.DEFINE_config_file(
        "config", None, "config", flag_values=fv, lock_config=True, sys_argv=argv
    )
    fv(argv)
    return fv.config


def test_flag_overrides_are_typed_and_unknown_keys_fail():
    c = _parse(
        ["--config.num_train_steps=7", "--config.loss_kwargs.beta=0.5", "--config.mesh.fsdp=4"]
    )
    assert (c.num_train_steps, c.loss_kwargs.beta, c.mesh.fsdp) == (7, 0.5, 4)
    with pytest.raises(flags.Error):
        _parse(["--config.num_train_steps=abc"])
    with pytest.raises((flags.Error, AttributeError, KeyError), match="no_such_key"):
        _parse(["--config.no_such_key=1"])


def _with(config, **updates):
    config = config.copy_and_resolve_references()
    with config.unlocked():  # some cases add a key (e.g. loss_kwargs.beta to an sft config)
        return config_lib.override(config, updates)


@pytest.mark.parametrize(
    "updates, match",
    [
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
    ],
)
def test_validate_config_fails_early_with_the_key_named(updates, match):
    with pytest.raises(ValueError, match=match):
        learners.validate(_with(_load("sft").get_config("tiny"), **updates))


def test_dpo_token_level_and_reference_checks():
    dpo = _load("dpo")
    with pytest.raises(ValueError, match="per-token reference"):
        learners.validate(dpo.get_config("tiny,loss=token_dpo,reference=precomputed"))
    learners.validate(dpo.get_config("tiny,loss=token_dpo"))


def test_cli_rejects_bad_override_before_building_anything(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train",
            "--config",
            "configs/sft.py:tiny",
            "--workdir",
            str(tmp_path / "w"),
            "--config.num_train_steps=abc",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "num_train_steps" in proc.stderr
    assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    "key, nearest",
    [
        ("optim.lr", "optim.learning_rate"),
        ("num_train_step", "num_train_steps"),
        ("model.dtyp", "model.dtype"),
        ("optm.learning_rate", "optim.learning_rate"),
    ],
)
def test_override_names_an_unknown_key_and_the_nearest_known_ones(key, nearest):
    c = _load("sft").get_config("tiny")
    with pytest.raises(KeyError) as e:
        config_lib.override(c, {key: 1})
    message = e.value.args[0]
    assert f"unknown config key {key!r}" in message and nearest in message, message
    with pytest.raises(KeyError, match="'seed' is a int value, not a section"):
        config_lib.override(c, {"seed.x": 1})
    assert config_lib.override(c, {"optim.learning_rate": 0.5}).optim.learning_rate == 0.5


def test_get_config_overrides_check_keys_of_multi_stage_configs():
    path = REPO / "configs" / "rso.py"
    with pytest.raises(KeyError, match="nearest known keys: .*preference.num_train_steps"):
        config_lib.get_config(path, "tiny", {"num_train_steps": 3})
    c = config_lib.get_config(path, "tiny", {"preference.num_train_steps": 3, "seed": 5})
    assert c.preference.num_train_steps == 3 and c.sft.seed == c.preference.data.seed == 5


def test_cli_override_keys_are_parsed_from_argv():
    argv = [
        "prog",
        "--config",
        "configs/sft.py:tiny",
        "--config.optim.lr=1",
        "-config.seed",
        "3",
        "--workdir=/w",
        "--",
        "--config.ignored=1",
    ]
    assert config_lib.cli_override_keys(argv[:-2]) == ["optim.lr", "seed"]
    with pytest.raises(KeyError, match="'optim.lr'.*optim.learning_rate"):
        config_lib.check_cli_overrides([a.replace("configs/", f"{REPO}/configs/") for a in argv])
    config_lib.check_cli_overrides(
        ["prog", f"--config={REPO}/configs/sft.py:tiny", "--config.seed=3"]
    )
    config_lib.check_cli_overrides(["prog", "--config.optim.lr=1"])  # no config file: absl's error


def test_cli_names_an_unknown_override_key_before_building_anything(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train",
            "--config",
            "configs/sft.py:tiny",
            "--workdir",
            str(tmp_path / "w"),
            "--config.optim.lr=1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert (
        "unknown config key 'optim.lr'" in proc.stderr and "optim.learning_rate" in proc.stderr
    ), proc.stderr
    assert "AttributeError" not in proc.stderr
    assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------- schema in the package


def test_schema_is_in_the_package_and_configs_import_it():
    args = config_lib.parse_arg("tiny,loss=ipo", {"tiny": False, "loss": "sft"})
    assert args == {"tiny": True, "loss": "ipo"}
    c = config_lib.base_config("preference", args)
    assert c.kind == "preference" and c.model.preset == "tiny" and c.loss_kwargs.beta == 0.1
    assert config_lib.loss_defaults("ipo").to_dict() == c.loss_kwargs.to_dict()
    assert (
        _load("sft").get_config("tiny").to_dict()
        == config_lib.base_config("sft", {"tiny": True, "loss": "sft"}).to_dict()
    )
    ppo = _load("ppo").get_config("tiny")
    base = online_config("ppo", {"tiny": True, "task": "sorting"}, "ppo")
    assert ppo.online.to_dict() == base.online.to_dict() and ppo.kind == "online"
    for path in sorted((REPO / "configs").glob("*.py")):
        src = path.read_text()
        assert "sibling(" not in src and "config_files" not in src, path.name
    for path in sorted(
        (REPO / "alignment").rglob("*.py")
    ):  # no library code reads a file under configs/
        tree = ast.parse(path.read_text())
        docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docs
            ):
                assert not re.fullmatch(r"configs|.*configs/\w+\.py", node.value), (
                    path,
                    node.lineno,
                )


@pytest.mark.parametrize(
    "name, stages",
    [
        ("rso", ("sft", "preference")),
        ("per_step", ("sft", "rft", "preference")),
        ("seft", ("stage",)),
    ],
)
def test_multi_stage_configs_declare_their_stages(name, stages):
    c = _load(name).get_config("tiny")
    learners.validate(c)  # the pipeline's checks, registered by experiments.pipelines
    for stage in stages:
        assert isinstance(c[stage], ml_collections.ConfigDict) and "export_hf" in c[stage], stage
        assert c[stage].export_hf and c[stage].kind in ("sft", "preference"), stage
    c = config_lib.override(c, {"seed": 11, "tokenizer": "/tok"})
    for stage in stages:  # shared knobs reach every stage
        assert (c[stage].seed, c[stage].data.seed, c[stage].tokenizer) == (11, 11, "/tok"), stage
