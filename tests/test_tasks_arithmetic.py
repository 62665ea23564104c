"""Multi-step arithmetic: generator, final-answer verifier, step segmentation and step checker."""

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from alignment.tasks import arithmetic as ar

SETTINGS = settings(max_examples=40, deadline=None)

knobs = st.fixed_dictionaries(
    {
        "num_ops": st.tuples(st.integers(1, 3), st.integers(0, 3)).map(
            lambda t: (t[0], t[0] + t[1])
        ),
        "operand_range": st.tuples(st.integers(-20, 20), st.integers(0, 30)).map(
            lambda t: (t[0], t[0] + t[1])
        ),
        "operators": st.lists(
            st.sampled_from(ar.OPERATORS), min_size=1, max_size=4, unique=True
        ).map(tuple),
        "spurious_step_prob": st.sampled_from([0.0, 0.3, 1.0]),
    }
)


def test_golden_problem_rendering_and_round_trip():
    problem = ar.Problem(12, (("+", 7), ("*", 3), ("-", 5)))
    assert problem.prompt == "compute: ((12+7)*3)-5"
    assert problem.solution_steps() == ["12+7=19", "19*3=57", "57-5=52", "answer: 52"]
    assert ar.parse_problem(problem.prompt) == problem
    negative = ar.Problem(-5, (("+", -3), ("/", 4)))
    assert negative.prompt == "compute: (-5+(-3))/4"
    assert negative.solution_steps() == ["-5+(-3)=-8", "-8/4=-2", "answer: -2"]
    assert ar.parse_problem(negative.prompt) == negative


@pytest.mark.parametrize(
    "prompt",
    [
        "compute: 12+7)*3",
        "compute: (12+7*3",
        "compute: 12",
        "sort: 1 2",
        "compute: 12+x",
        "compute: (7/2)+1",
    ],
)
def test_non_canonical_prompt_is_a_clear_error(prompt):
    with pytest.raises(ValueError, match="arithmetic prompt"):
        ar.parse_problem(prompt)


@SETTINGS
@given(knobs=knobs, seed=st.integers(0, 2**40))
def test_demonstrations_always_verify_and_respect_knobs(knobs, seed):
    task = ar.ArithmeticTask(**knobs)
    try:
        demonstrations = task.demonstrations("train", 3, seed)
    except ValueError as e:  # tiny spaces, e.g. only '/' on (0, 0): a clear error, not a hang
        assert "too small" in str(e) or "cannot build problems" in str(e)
        assume(False)
    for prompt, response in demonstrations:
        problem = ar.parse_problem(prompt)
        assert task.num_ops[0] <= len(problem.ops) <= task.num_ops[1]
        lo, hi = task.operand_range
        assert lo <= problem.first <= hi and all(lo <= b <= hi for _, b in problem.ops)
        assert {op for op, _ in problem.ops} <= set(task.operators)
        assert all(abs(v) <= task.max_abs_value for v in problem.values())
        assert task.verify(prompt, response) and task.gold_reward(prompt, response) == 1.0
        assert all(ar.step_correctness(prompt, response)), response
        assert ar.first_error(prompt, response) is None
        if knobs["spurious_step_prob"] == 0.0:
            assert response == "\n".join(problem.solution_steps())
        else:
            assert len(ar.split_steps(response)) >= len(problem.ops) + 1


def test_spurious_steps_are_identities_and_appear():
    task = ar.ArithmeticTask(spurious_step_prob=1.0)
    prompt, response = task.demonstrations("train", 1, 0)[0]
    steps = ar.split_steps(response)
    n_ops = len(ar.parse_problem(prompt).ops)
    assert len(steps) == 2 * n_ops + 1  # one identity after every real step
    for spurious in steps[1:-1:2]:
        a, op, b, c = ar.parse_step(spurious)
        assert a == c and (op, b) in ar.IDENTITY_OPS


@SETTINGS
@given(
    seed=st.integers(0, 2**32),
    delta=st.integers(-1000, 1000).filter(bool),
    form=st.sampled_from(["answer: {}", "Answer:{}", "  ANSWER :  {} .", "final answer: {}"]),
)
def test_any_corruption_of_the_final_answer_fails(seed, delta, form):
    task = ar.ArithmeticTask()
    prompt, response = task.demonstrations("test", 1, seed)[0]
    answer = ar.parse_problem(prompt).answer
    body = response.rsplit("\n", 1)[0]
    assert task.verify(prompt, body + "\n" + form.format(answer))
    assert not task.verify(prompt, body + "\n" + form.format(answer + delta))
    assert task.gold_reward(prompt, body + "\n" + form.format(answer + delta)) == 0.0
    assert ar.step_correctness(prompt, body + "\n" + form.format(answer + delta))[-1] is False


@pytest.mark.parametrize(
    "text,expected",
    [
        ("answer: 57", 57),
        ("answer:57", 57),
        ("  Answer :  57.  ", 57),
        ("answer: +57", 57),
        ("answer: -57", -57),
        ("answer: - 57", -57),
        ("answer: \u221257", -57),
        ("answer 57", 57),
        ("the answer is 3\nanswer: 57", 57),
        ("answer: 1\nanswer: 57\n\n", 57),
        ("final answer: 57", 57),
        ("answer is 57", 57),
        ("answer: fifty-seven", None),
        ("answer: 57 58", None),
        ("answer: 57 apples", None),
        ("answer:", None),
        ("57", None),
        ("", None),
        ("answers: 57", None),
        ("answer: 5.7", None),
        ("answer: --57", None),
        ("\x00answer\x00: 5", None),
    ],
)
def test_answer_parsing(text, expected):
    assert ar.parse_answer(text) == expected


@SETTINGS
@given(text=st.text(max_size=60))
def test_malformed_responses_are_incorrect_never_an_exception(text):
    prompt = "compute: (12+7)*3"
    ok = ar.ArithmeticTask().verify(prompt, text)
    assert ok == (ar.parse_answer(text) == 57)
    flags = ar.step_correctness(prompt, text)
    assert len(flags) == len(ar.split_steps(text))


def test_negative_answers_need_their_sign():
    prompt = "compute: (3-10)*2"
    task = ar.ArithmeticTask()
    assert task.verify(prompt, "3-10=-7\n-7*2=-14\nanswer: -14")
    assert task.verify(prompt, "answer: \u2212 14")
    assert not task.verify(prompt, "3-10=-7\n-7*2=-14\nanswer: 14")
    assert ar.step_correctness(prompt, "3-10=-7\n-7*2=-14\nanswer: -14") == [True] * 3


@pytest.mark.parametrize(
    "response,expected",
    [
        # An arithmetic slip at step 1; later steps follow from what was written, so only it is wrong.
        ("12+7=19\n19*3=56\n56-5=51\nanswer: 51", [True, False, True, True]),
        # Right arithmetic, wrong operation: the pending '*3' is used up by the wrong attempt.
        ("12+7=19\n19+3=22\n22-5=17\nanswer: 17", [True, False, True, True]),
        # Harmless identity steps anywhere.
        ("12+7=19\n19+0=19\n19*3=57\n57*1=57\n57-5=52\n52-0=52\nanswer: 52", [True] * 7),
        # A step that does not start from the current value.
        ("12+7=19\n20*3=60\n60-5=55\nanswer: 55", [True, False, True, True]),
        # Garbage, an early answer, a step past the last operation.
        (
            "12+7=19\nhmm let me think\n19*3=57\n57-5=52\nanswer: 52",
            [True, False, True, True, True],
        ),
        ("12+7=19\nanswer: 19", [True, False]),
        ("12+7=19\n19*3=57\n57-5=52\n52+1=53\nanswer: 53", [True, True, True, False, True]),
        ("12 + 7 = 19\n\n19 \u00d7 3 = 57\r\n57 \u2212 5 = 52\nanswer: 52", [True] * 4),
    ],
)
def test_step_correctness_hand_cases(response, expected):
    prompt = "compute: ((12+7)*3)-5"
    assert ar.step_correctness(prompt, response) == expected
    first = expected.index(False) if False in expected else None
    assert ar.first_error(prompt, response) == first


@SETTINGS
@given(
    lines=st.lists(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8), max_size=6
    ),
    sep=st.sampled_from(["\n", "\r\n", "\n\n"]),
    tail=st.sampled_from(["", "\n"]),
)
def test_step_prefixes_are_exact_prefixes(lines, sep, tail):
    response = sep.join(lines) + tail
    steps, prefixes = ar.split_steps(response), ar.step_prefixes(response)
    assert len(prefixes) == len(steps) + 1 and prefixes[0] == ""
    assert all(response.startswith(p) for p in prefixes)
    assert all(len(a) <= len(b) for a, b in zip(prefixes, prefixes[1:]))
    for step, prefix in zip(steps, prefixes[1:]):
        assert step and step == step.strip() and prefix.rstrip().endswith(step)
    if steps:
        assert prefixes[-1] == response[: len(prefixes[-1])]
        assert response[len(prefixes[-1]) :].strip() == ""


def test_step_prefixes_hand_case():
    response = "12+7=19\n\n19*3=57\nanswer: 57"
    assert ar.split_steps(response) == ["12+7=19", "19*3=57", "answer: 57"]
    assert ar.step_prefixes(response) == ["", "12+7=19\n", "12+7=19\n\n19*3=57\n", response]


def test_generation_is_deterministic_and_splits_are_held_out():
    task = ar.ArithmeticTask()
    train = task.prompts("train", 300, seed=0)
    assert train == task.prompts("train", 300, seed=0)
    assert train != task.prompts("train", 300, seed=1)
    assert len(set(train)) == 300
    test = task.prompts("test", 100, seed=0)
    assert not set(train) & set(test)
    assert [p for p, _ in task.demonstrations("test", 100, seed=0)] == test
    # Golden: if this changes, every dataset built from this task changes; update deliberately.
    assert task.prompts("train", 2, seed=0) == GOLDEN_TRAIN_SEED0, task.prompts("train", 2, 0)


GOLDEN_TRAIN_SEED0 = ["compute: (((2+1)+4)+1)-15", "compute: ((16*11)*14)+5"]


def test_division_is_exact():
    task = ar.ArithmeticTask(operators=("/", "*"), operand_range=(1, 12), num_ops=(3, 5))
    for prompt in task.prompts("train", 50, seed=3):
        problem = ar.parse_problem(prompt)
        assert "/" in prompt or all(op == "*" for op, _ in problem.ops)
        problem.values()  # raises on an inexact division


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_ops": (0, 2)}, "num_ops"),
        ({"num_ops": (3, 2)}, "num_ops"),
        ({"operators": ("^",)}, "operators"),
        ({"operators": ()}, "operators"),
        ({"operand_range": (5, 1)}, "operand_range"),
        ({"spurious_step_prob": 1.5}, "spurious"),
        ({"max_abs_value": 5}, "max_abs_value"),
    ],
)
def test_bad_knobs_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ar.ArithmeticTask(**kwargs)


def test_unknown_split_and_bad_count():
    task = ar.ArithmeticTask()
    with pytest.raises(ValueError, match="valid splits: train, validation, test"):
        task.prompts("dev", 3, 0)
    with pytest.raises(ValueError, match="non-negative"):
        task.prompts("train", -1, 0)
    assert task.prompts("train", 0, 0) == []


def test_too_small_prompt_space_is_a_clear_error():
    task = ar.ArithmeticTask(num_ops=(1, 1), operand_range=(1, 2), operators=("+",))
    with pytest.raises(ValueError, match="prompt space is too small"):
        task.prompts("train", 10, 0)


def test_values_match_python_eval():
    task = ar.ArithmeticTask(num_ops=(1, 4), operators=("+", "-", "*"))
    for prompt in task.prompts("validation", 30, seed=5):
        expr = prompt[len(ar.PROMPT_PREFIX) :]
        assert eval(expr) == ar.parse_problem(prompt).answer  # noqa: S307 (our own digits)
        assert re.fullmatch(r"[\d()+\-*]+", expr)
