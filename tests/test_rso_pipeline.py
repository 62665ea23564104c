"""configs/rso.py end to end through `alignment.learners.run` and the pipeline registered by
`experiments.pipelines` (SFT stage -> sample -> score -> rejection-sample -> pair -> preference
training), tiny sizes, in-process."""

import json
import os
import pathlib

import numpy as np
import pytest

from alignment import learners, rewards, tasks
from alignment import metrics as metrics_lib
from alignment.engine.config import get_config
from experiments.pipelines import rso

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(arg="tiny", **updates):
    return get_config(REPO / "configs" / "rso.py", arg, updates)


SMALL = {
    "rso.sft_steps": 2,
    "rso.sft_examples": 32,
    "rso.num_prompts": 8,
    "rso.num_eval_prompts": 2,
    "rso.num_samples": 6,
    "rso.num_accepted": 4,
    "rso.max_new_tokens": 16,
    "sft.optim.warmup_steps": 1,
    "sft.tensorboard": False,
    "sft.progress_bar": False,
    "preference.num_train_steps": 4,
    "preference.checkpoint_every_steps": 4,
    "preference.eval_every_steps": 4,
    "preference.eval_batches": 1,
    "preference.global_batch_size": 8,
    "preference.tensorboard": False,
    "preference.progress_bar": False,
}


def _length_reward(inputs):
    """A proxy reward with few ties even for an untrained policy's gibberish (the gold reward
    of the task, logged as reward_mean, is still the task's)."""
    return np.asarray(
        [len(r) + 0.01 * (sum(map(ord, r)) % 97) for r in inputs.responses], np.float32
    )


@pytest.fixture(scope="module")
def rso_run(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setattr(rewards, "make_reward", lambda cfg, **kw: rewards.checked(_length_reward, "length"))
    workdir = tmp_path_factory.mktemp("rso")
    config = _config(**SMALL)
    try:
        learners.run(config, str(workdir))
        yield config, workdir
    finally:
        mp.undo()


def test_tiny_rso_runs_end_to_end_and_logs_reward_mean_and_kl(rso_run):
    config, workdir = rso_run
    lines = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    for r in lines:
        assert "reward_mean" in r and "kl" in r and np.isfinite(r["kl"]), r
    rows = [json.loads(x) for x in open(os.path.join(workdir, "rso_data", "train.jsonl"))]
    assert rows and len(rows) <= 8 * 4 // 2  # random pairing: M/2 disjoint pairs per prompt
    for row in rows:
        assert row["chosen_reward"] > row["rejected_reward"]
        assert row["chosen"] != row["rejected"]
    task = tasks.get_task("sentiment")
    gold = task.gold_rewards(
        [r["prompt"] for r in rows] * 2, [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    )
    np.testing.assert_allclose(lines[0]["reward_mean"], gold.mean(), rtol=1e-5, atol=1e-6)
    stats = json.load(open(os.path.join(workdir, "rso.json")))
    tr = stats["train"]
    assert tr["prompts"] == 8 and tr["samples_per_prompt"] == 6 and tr["accepted_per_prompt"] == 4
    assert tr["pairs_written"] == len(rows)
    assert (
        tr["reward_mean_accepted"] >= tr["reward_mean_all"] - 1e-6
    )  # beta=0.5 tilts toward high reward
    assert "eval" in stats and any(k.startswith("eval_") for k in lines[-1])
    run = json.load(open(os.path.join(workdir, "run.json")))
    assert run["kind"] == "preference" and run["reference"] == os.path.join(workdir, "sft", "hf")
    assert run["task"] == "sentiment" and os.path.isfile(os.path.join(workdir, "hf", "config.json"))


def test_rerun_reuses_pairs_and_resumes(rso_run):
    config, workdir = rso_run
    data = os.path.join(workdir, "rso_data", "train.jsonl")
    before = (os.path.getmtime(data), open(os.path.join(workdir, "metrics.jsonl")).read())
    # no reward function is needed (nor built) when the pairs are already there
    learners.run(config, str(workdir))
    assert os.path.getmtime(data) == before[0]
    assert open(os.path.join(workdir, "metrics.jsonl")).read() == before[1]


def test_rerun_with_other_generation_settings_refuses_stale_pairs(rso_run):
    _, workdir = rso_run
    with pytest.raises(ValueError, match=r"other settings \(\['beta'\]"):
        learners.run(_config(**{**SMALL, "rso.beta": 2.0}), str(workdir))


@pytest.mark.parametrize(
    "updates, match",
    [
        ({"rso.num_accepted": 80}, "num_accepted=80 exceeds config.rso.num_samples"),
        ({"rso.sampler": "best"}, "rso.sampler"),
        ({"rso.pairing": "swiss"}, "rso.pairing"),
        ({"rso.beta": 0.0}, "rso.beta"),
        ({"preference.loss": "ipo"}, "preference.loss"),
        ({"rso.sft_steps": 0}, "config.init_from"),
        ({"rso.num_eval_prompts": 0}, "preference.eval_every_steps=0"),
        ({"rso.num_accepted": 1}, "at least 2"),
    ],
)
def test_bad_config_fails_before_any_work(tmp_path, updates, match):
    with pytest.raises(ValueError, match=match):
        learners.run(_config(**updates), str(tmp_path))
    assert not os.path.exists(tmp_path / "sft")


def test_sft_sampler_needs_no_candidate_pool():
    c = _config("tiny,sampler=sft", **{"rso.num_samples": 2, "rso.num_accepted": 4})
    rso.check_rso_config(c)  # sampler=sft draws num_accepted plain samples: no subset to take
