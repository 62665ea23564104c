"""`configs/reward_model.py:tiny` end to end through the engine: metrics.jsonl, held-out
accuracy on gold-labelled sentiment pairs, the *ForSequenceClassification export, and
`rewards.make_reward(kind="reward_model")` on that export; plus the task pair data source
and its noisy Bradley-Terry labels.

If the accuracy test fails after a change to the model, optimiser or data defaults, rerun
`python -m experiments.train --config configs/reward_model.py:tiny` and look at eval_accuracy
in metrics.jsonl before touching the threshold: tiny reaches ~0.9 by step 50."""

import json
import os
import pathlib

import numpy as np
import pytest

from alignment import learners, rewards, tasks
from alignment.data.task_pairs import task_rows
from alignment.engine import config as config_files
from alignment.tokenizer import tiny_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 50


def _config(arg="tiny", **updates):
    return config_files.get_config(
        REPO / "configs" / "reward_model.py",
        arg,
        {"progress_bar": False, "tensorboard": False, "checkpoint_async": False, **updates},
    )


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("rm"))
    config = _config(num_train_steps=STEPS, checkpoint_every_steps=STEPS, eval_every_steps=STEPS)
    learners.run(config, workdir)
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {"workdir": workdir, "config": config, "rows": rows}


def test_config_validates_and_has_the_reward_model_kind():
    c = _config()
    learners.validate(c)
    assert c.kind == "reward_model" and c.data.kind == "preference" and c.loss == "bradley_terry"
    assert set(c.loss_kwargs.keys()) == {"margin", "center_rewards_coefficient"}
    assert c.tokenizer == "tiny" and c.model.preset == "tiny"
    with pytest.raises(ValueError, match="is a preference loss; kind='reward_model' needs"):
        learners.validate(_config(loss="dpo"))
    with pytest.raises(ValueError, match="kind='reward_model' reads 'preference' data"):
        bad = _config()
        with bad.unlocked():
            bad.data = __import__("alignment.data", fromlist=["x"]).default_data_config("sft")
        learners.validate(bad)
    noisy = _config("tiny,label_temperature=0.3")
    assert noisy.data.task_source.label_temperature == 0.3


def test_tiny_reward_model_learns_gold_preferences(rm_run):
    rows = rm_run["rows"]
    assert [r["step"] for r in rows] == list(range(10, STEPS + 1, 10))
    for r in rows:
        for key in ("loss", "accuracy", "margin", "chosen_scores", "rejected_scores", "grad_norm"):
            assert np.isfinite(r[key]), (key, r)
    last = rows[-1]
    # 128 held-out pairs of prompts never seen in training, labelled by the gold (VADER) scorer
    assert last["eval_accuracy"] >= 0.8, last
    assert last["eval_margin"] > 0 and last["eval_loss"] < np.log(2)


def test_exported_reward_model_scores_held_out_pairs_like_the_gold_scorer(rm_run):
    folder = os.path.join(rm_run["workdir"], "hf")
    cfg_json = json.loads(open(os.path.join(folder, "config.json")).read())
    assert (
        cfg_json["architectures"] == ["LlamaForSequenceClassification"]
        and cfg_json["num_labels"] == 1
    )
    reward_cfg = rewards.default_reward_config()
    reward_cfg.kind, reward_cfg.path, reward_cfg.batch_size = "reward_model", folder, 16
    fn = rewards.make_reward(reward_cfg)  # EOS from the tokenizer saved with the export
    pairs = task_rows(
        "sentiment", kind="preference", split="validation", n=48, seed=1, label_temperature=0.0
    )
    tok = tiny_tokenizer()
    prompts = [p["prompt"] for p in pairs]
    chosen = fn(rewards.RewardInputs.from_text(prompts, [p["chosen"] for p in pairs], tok))
    rejected = fn(rewards.RewardInputs.from_text(prompts, [p["rejected"] for p in pairs], tok))
    assert np.mean(chosen > rejected) >= 0.75
    # the pairwise preference model built on it prefers the gold-better response on average
    pref = rewards.make_preference(reward_cfg, tokenizer=tok)
    p = pref(
        rewards.RewardInputs.from_text(prompts, [x["chosen"] for x in pairs], tok),
        rewards.RewardInputs.from_text(prompts, [x["rejected"] for x in pairs], tok),
    )
    assert p.mean() > 0.6


def test_task_pairs_gold_and_noisy_labels():
    task = tasks.get_task("sentiment")
    gold = task_rows(
        "sentiment", kind="preference", split="train", n=400, seed=0, label_temperature=0.0
    )
    g = np.array(
        [
            [
                task.gold_reward(r["prompt"], r["chosen"]),
                task.gold_reward(r["prompt"], r["rejected"]),
            ]
            for r in gold
        ]
    )
    assert (g[:, 0] > g[:, 1]).all()
    assert gold == task_rows(
        "sentiment", kind="preference", split="train", n=400, seed=0, label_temperature=0.0
    )
    # noisy labels: a pair keeps its gold order with probability sigmoid(|gap| / t)
    t = 0.5
    noisy = task_rows(
        "sentiment", kind="preference", split="train", n=400, seed=0, label_temperature=t
    )
    kept = np.array([n["chosen"] == r["chosen"] for n, r in zip(noisy, gold)])
    expected = 1 / (1 + np.exp(-(g[:, 0] - g[:, 1]) / t))
    assert abs(kept.mean() - expected.mean()) < 4 * np.sqrt(
        np.sum(expected * (1 - expected))
    ) / len(kept)
    assert 0.5 < kept.mean() < 0.95
    # held-out splits keep gold labels whatever the temperature
    held = task_rows(
        "sentiment", kind="preference", split="test", n=50, seed=0, label_temperature=t
    )
    assert held == task_rows(
        "sentiment", kind="preference", split="test", n=50, seed=0, label_temperature=0.0
    )
    assert not {r["prompt"] for r in held} & {r["prompt"] for r in gold}
    # other tasks: sorting (corrupted copy) and arithmetic (another prompt's demonstration)
    for name in ("sorting", "arithmetic"):
        t_ = tasks.get_task(name)
        for r in task_rows(
            name, kind="preference", split="train", n=20, seed=0, label_temperature=0.0
        ):
            assert t_.gold_reward(r["prompt"], r["chosen"]) > t_.gold_reward(
                r["prompt"], r["rejected"]
            )
    sft = task_rows("arithmetic", kind="sft", split="train", n=3, seed=0, label_temperature=0.0)
    assert [(r["prompt"], r["completion"]) for r in sft] == tasks.get_task(
        "arithmetic"
    ).demonstrations("train", 3, 0)
