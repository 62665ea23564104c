"""Task registry and the shared split / seeding rules every task relies on."""

import collections
import sys

import numpy as np
import pytest

from alignment import tasks
from alignment.tasks import base


def test_available_and_get_task():
    assert tasks.available() == ["arithmetic", "reasoning_gym", "sentiment", "sorting"]
    task = tasks.get_task("arithmetic", num_ops=(3, 3), operators=["+"])
    assert isinstance(task, tasks.Task) and task.name == "arithmetic"
    assert task.num_ops == (3, 3) and task.operators == ("+",)
    for name in ("arithmetic", "sentiment", "sorting"):
        assert tasks.get_task(name).name == name


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(
        ValueError, match="valid tasks: arithmetic, reasoning_gym, sentiment, sorting"
    ):
        tasks.get_task("arithmatic")


def test_unknown_option_lists_the_task_options():
    with pytest.raises(TypeError, match=r"no option\(s\) \['lenght'\].*'length'"):
        tasks.get_task("sorting", lenght=(2, 3))


def test_tasks_are_frozen_and_hashable():
    task = tasks.get_task("sorting")
    with pytest.raises(AttributeError):
        task.length = (2, 2)
    assert hash(task) == hash(tasks.get_task("sorting")) and task == tasks.get_task("sorting")


def test_split_of_is_stable_and_has_the_documented_fractions():
    # Golden: these assignments define which prompts are held out. If they change, every
    # train/test split moves; change split_of only deliberately and say so in the changelog.
    assert [
        base.split_of(k) for k in ("compute: (12+7)*3", "sort: 10 3 9 1", "sort: 33 3 9 1")
    ] == GOLDEN_SPLITS
    counts = collections.Counter(base.split_of(f"key {i}") for i in range(20_000))
    for name, fraction in base.SPLIT_FRACTIONS:
        assert abs(counts[name] / 20_000 - fraction) < 0.015, counts


GOLDEN_SPLITS = ["train", "validation", "test"]


def test_make_rng_separates_tasks_splits_seeds_and_streams():
    draws = {
        args: base.make_rng(*args).integers(2**62)
        for args in [
            ("a", "train", 0, "prompts"),
            ("b", "train", 0, "prompts"),
            ("a", "test", 0, "prompts"),
            ("a", "train", 1, "prompts"),
            ("a", "train", 0, "demonstrations"),
            ("a", "train", 2**33, "prompts"),
        ]
    }
    assert len(set(draws.values())) == len(draws)
    assert (
        base.make_rng("a", "train", 0, "prompts").integers(2**62)
        == draws[("a", "train", 0, "prompts")]
    )


def test_gold_rewards_batches_and_checks_lengths():
    task = tasks.get_task("sorting")
    out = task.gold_rewards(["sort: 2 1", "sort: 2 1"], ["1 2", "2 1"])
    assert out.dtype == np.float32 and out.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        task.gold_rewards(["sort: 2 1", "sort: 2 1"], ["1 2"])


@pytest.mark.parametrize(
    "text,expected",
    [
        ("answer: 5", "5"),
        ("x\nAnswer:  five  ", "five"),
        ("answer is 7", "7"),
        ("no", None),
        ("answering now\n", None),
        ("answer: 1\nanswer: 2", "2"),
        ("final answer = 3", "3"),
    ],
)
def test_answer_text(text, expected):
    assert base.answer_text(text) == expected


def test_importing_tasks_pulls_no_jax_or_flax():
    import subprocess

    code = (
        "import sys, alignment.tasks as t; [t.get_task(n) for n in ('arithmetic', "
        "'sentiment', 'sorting')]; print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('jax', 'flax', 'reasoning_gym')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
