"""reasoning-gym adapter: an optional extra, skipped where the package is absent."""

import builtins

import pytest

from alignment import tasks
from alignment.tasks import reasoning_gym as rgt


def test_missing_package_raises_an_import_error_naming_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_reasoning_gym(name, *args, **kwargs):
        if name == "reasoning_gym" or name.startswith("reasoning_gym."):
            raise ImportError("No module named 'reasoning_gym'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_reasoning_gym)
    with pytest.raises(ImportError, match=r"pip install reasoning-gym.*alignment\[reasoning\]"):
        tasks.get_task("reasoning_gym")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("so 12 apples\nanswer: 12", "12"),
        ("<answer>12</answer>", "12"),
        ("<answer>1</answer> then <answer> 7 </answer>", "7"),
        ("answer: 3\n<answer>4</answer>", "3"),
        ("I think it is 12", None),
    ],
)
def test_extract_answer(text, expected):
    assert rgt.extract_answer(text) == expected


@pytest.fixture(scope="module")
def gsm():
    pytest.importorskip("reasoning_gym", reason="optional extra reasoning-gym is not installed")
    return tasks.get_task("reasoning_gym", dataset="gsm_symbolic", pool_size=400)


def test_demonstrations_score_one_and_wrong_answers_do_not(gsm):
    demos = gsm.demonstrations("train", 4, seed=0)
    assert [p for p, _ in demos] == gsm.prompts("train", 4, seed=0)
    for prompt, response in demos:
        assert response.splitlines()[-1].startswith("answer: ")
        assert "####" not in response
        assert gsm.gold_reward(prompt, response) == 1.0 and gsm.verify(prompt, response)
        right = response.splitlines()[-1][len("answer: ") :]
        wrong = str(int(float(right)) + 1)
        assert gsm.gold_reward(prompt, f"<answer>{right}</answer>") == 1.0
        assert gsm.gold_reward(prompt, f"answer: {wrong}") < 1.0
        assert not gsm.verify(prompt, f"answer: {wrong}")
        assert gsm.gold_reward(prompt, "I have no idea") == 0.0


def test_deterministic_and_held_out(gsm):
    train = gsm.prompts("train", 6, seed=0)
    assert train == gsm.prompts("train", 6, seed=0) != gsm.prompts("train", 6, seed=1)
    test = gsm.prompts("test", 3, seed=0)
    assert not set(train) & set(test)
    assert {tasks.split_of(p) for p in test} == {"test"}


def test_unknown_prompt_and_dataset_are_clear_errors(gsm):
    with pytest.raises(KeyError, match="was not handed out"):
        gsm.gold_reward("What is 2+2?", "answer: 4")
    with pytest.raises(ValueError, match="unknown reasoning-gym dataset 'gsm9k'"):
        tasks.get_task("reasoning_gym", dataset="gsm9k")
    with pytest.raises(ValueError, match="pool_size=3"):
        tasks.get_task("reasoning_gym", pool_size=3).prompts("test", 3, seed=0)
