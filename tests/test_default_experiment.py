"""The default experiment (`make run`): a shortened run end to end, its summary contract, stage
reuse, and the errors for bad settings."""

import importlib.util
import json
import math
import pathlib

import pytest

from alignment import learners, pretrain
from alignment.engine.config import get_config
from alignment.evaluation import harness

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(arg="quick", **overrides):
    return get_config(REPO / "configs" / "default.py", arg, overrides)


_MODULES = {}


def _experiment():
    # loaded once: the module defines absl flags, which may be defined only once per process
    if "default" in _MODULES:
        return _MODULES["default"]
    spec = importlib.util.spec_from_file_location(
        "_test_experiments_default", REPO / "experiments" / "default.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _MODULES["default"] = module
    return module


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("default")
    summary = _experiment().run(_config(), str(workdir))
    return workdir, summary


def test_quick_default_experiment_writes_the_summary_contract(quick_run):
    workdir, summary = quick_run
    on_disk = json.loads((workdir / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for side in ("before", "after"):
        for key in ("gold_reward", "win_rate", "kl"):
            assert isinstance(on_disk[side][key], float) and math.isfinite(on_disk[side][key]), (
                side,
                key,
            )
    # before = the SFT policy against itself: common random numbers give identical samples
    assert on_disk["before"]["win_rate"] == 0.5
    assert abs(on_disk["before"]["kl"]) < 1e-4
    assert on_disk["before"]["gold_reward"] == on_disk["before"]["reference_gold_reward"]
    assert on_disk["after"]["reference_gold_reward"] == on_disk["before"]["gold_reward"]
    assert 0.0 <= on_disk["after"]["win_rate"] <= 1.0
    assert (workdir / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the pairs are gold-labelled: chosen beats rejected by at least the margin
    rows = [
        json.loads(line) for line in (workdir / "pairs" / "train.jsonl").read_text().splitlines()
    ]
    assert rows and all(r["chosen_reward"] - r["rejected_reward"] >= 0.05 for r in rows)
    assert summary["base"]["source"] in ("shipped", "cache")
    for stage in ("sft", "dpo"):
        assert (workdir / stage / "hf" / "config.json").is_file()


def test_rerun_reuses_every_stage(quick_run, monkeypatch):
    workdir, summary = quick_run

    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(learners, "run", refuse)
    monkeypatch.setattr(harness, "generate_all", refuse)
    monkeypatch.setattr(harness, "evaluate_policy", refuse)
    again = _experiment().run(_config(), str(workdir))
    assert again["before"] == summary["before"] and again["after"] == summary["after"]


def test_evaluate_cli_contract_on_the_dpo_run(quick_run):
    """`python -m experiments.evaluate --workdir WORKDIR/dpo` writes eval.json with the summary's keys,
    finding policy (dpo/hf), reference (the SFT export) and task in the run's run.json."""
    workdir, _ = quick_run
    spec = importlib.util.spec_from_file_location(
        "_test_experiments_evaluate", REPO / "experiments" / "evaluate.py"
    )
    evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
    run = workdir / "dpo"
    record = json.loads((run / "run.json").read_text())
    assert record["reference"] == str(workdir / "sft" / "hf") and record["task"] == "sentiment"
    assert evaluate.main(
        [
            "--workdir",
            str(run),
            "--num_prompts",
            "4",
            "--samples_per_prompt",
            "2",
            "--max_new_tokens",
            "8",
        ]
    ) in (0, None)
    result = json.loads((run / "eval.json").read_text())
    assert {"gold_reward", "win_rate", "kl"} <= set(result)
    assert result["task"] == "sentiment"


def test_workdir_of_another_config_is_refused(quick_run):
    workdir, _ = quick_run
    with pytest.raises(ValueError, match="another config.*seed"):
        _experiment().run(_config(seed=7), str(workdir))


@pytest.mark.parametrize(
    "key,match",
    [
        ("eval.num_prompts", "eval.num_prompts=0"),
        ("pairs.num_prompts", "pairs.num_prompts=0"),
    ],
)
def test_empty_prompt_sets_fail_before_training(key, match, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain, "build_base", lambda *a, **k: pytest.fail("built a base"))
    with pytest.raises(ValueError, match=match):
        _experiment().run(_config(**{key: 0}), str(tmp_path))
    assert not (tmp_path / "config.json").exists()


def test_evaluation_set_larger_than_the_split_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="split 'test' holds .* prompts"):
        _experiment().run(_config(**{"eval.num_prompts": 100000}), str(tmp_path))


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown task 'nosuch'"):
        _config("quick,task=nosuch")
