"""`python -m experiments.evaluate` end to end on tiny random models saved as HF folders."""

import json
import os
import runpy
import subprocess
import sys

import pytest
from flax import nnx

from alignment import models
from alignment.tokenizer import tiny_tokenizer
from experiments import evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = models.get_preset("tiny", n_layers=1, max_seq_len=64)
FAST = [
    "--num_prompts",
    "2",
    "--samples_per_prompt",
    "2",
    "--max_new_tokens",
    "4",
    "--num_examples",
    "1",
]


def _save(path, seed, tokenizer=False):
    models.save_pretrained(models.Transformer(CFG, rngs=nnx.Rngs(seed)), str(path))
    if tokenizer:
        tiny_tokenizer().save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_runs")
    reference = _save(root / "reference", 0)
    out = {"root": root, "reference": reference}
    for name, seed in (("run_a", 1), ("run_b", 2)):
        run = root / name
        _save(run / "hf", seed, tokenizer=True)
        (run / "run.json").write_text(
            json.dumps({"reference": reference, "task": "sorting", "loss": "dpo"})
        )
        out[name] = str(run)
    return out


def test_cli_writes_eval_json_and_markdown(runs):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", "--workdir", runs["run_a"], *FAST],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(runs["run_a"], "eval.json")) as f:
        result = json.load(f)
    for key in ("gold_reward", "win_rate", "kl", "pass_at_k", "ranking_accuracy", "examples"):
        assert key in result, key
    assert (
        result["task"] == "sorting"
        and result["num_prompts"] == 2
        and result["samples_per_prompt"] == 2
    )
    assert result["reference"] == os.path.abspath(runs["reference"])
    assert 0.0 <= result["win_rate"] <= 1.0 and set(result["pass_at_k"]) == {"1", "2"}
    md = open(os.path.join(runs["run_a"], "eval.md")).read()
    assert "| run | gold reward" in md and "## Examples" in md


def test_cli_frontier_reuses_cached_results_and_plots(runs, tmp_path):
    cached = {"gold_reward": 0.25, "kl": 3.0, "win_rate": 0.7}
    with open(os.path.join(runs["run_b"], "eval.json"), "w") as f:
        json.dump(cached, f)
    plain_hf = _save(tmp_path / "ckpt_hf", 3, tokenizer=True)  # an HF folder, no run.json
    out = tmp_path / "frontier"
    assert (
        evaluate.main(
            [
                "--workdir",
                str(out),
                "--frontier",
                runs["run_b"],
                plain_hf,
                "--reference",
                runs["reference"],
                "--task",
                "sorting",
                *FAST,
            ]
        )
        == 0
    )
    result = json.load(open(out / "eval.json"))
    assert "gold_reward" not in result  # OUT has no policy of its own
    points = result["frontier"]
    assert [p["label"] for p in points] == ["run_b", "ckpt_hf"]
    assert points[0]["kl"] == 3.0 and points[0]["series"] == "dpo"  # read back, not re-evaluated
    assert isinstance(points[1]["kl"], float)
    assert open(out / "frontier.png", "rb").read(4) == b"\x89PNG"
    assert "frontier.png" in open(out / "eval.md").read()


@pytest.mark.parametrize(
    "extra,error,match",
    [
        (["--task", "no_such_task"], ValueError, "unknown task 'no_such_task'"),
        (["--num_prompts", "0"], ValueError, "no prompts"),
        (["--task_kwargs", "{bad"], ValueError, "--task_kwargs is not valid JSON"),
        (["--task_kwargs", '{"colour": 1}'], TypeError, "no option"),
        (["--reference", "/nonexistent"], FileNotFoundError, "not a Hugging Face model folder"),
        (["--mesh", "fsdp=x"], ValueError, "fsdp size .x. is not an int"),
    ],
)
def test_cli_bad_input_is_a_clear_error(runs, extra, error, match):
    with pytest.raises(error, match=match):
        evaluate.main(["--workdir", runs["run_a"], *FAST, *extra])


def test_cli_missing_policy_and_reference(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="no policy"):
        evaluate.main(["--workdir", str(tmp_path), *FAST])
    run = tmp_path / "norecord"
    _save(run / "hf", 4, tokenizer=True)
    with pytest.raises(ValueError, match="no reference model"):
        evaluate.main(["--workdir", str(run), "--task", "sorting", *FAST])
    with pytest.raises(ValueError, match="no task"):
        evaluate.main(["--workdir", str(run), "--reference", runs["reference"], *FAST])


def test_module_entry_point_reports_bad_input_in_one_line(runs, monkeypatch, capsys):
    monkeypatch.delitem(
        sys.modules, "experiments.evaluate", raising=False
    )  # run it afresh as __main__
    monkeypatch.setattr(
        sys, "argv", ["evaluate", "--workdir", runs["run_a"], "--task", "nope", *FAST]
    )
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("experiments.evaluate", run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("evaluate: error: unknown task 'nope'") and "\n" not in err
