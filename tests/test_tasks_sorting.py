"""List sorting: adjacent-pair quality, malformed responses explained, worse corruptions."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignment.tasks import sorting as so

SETTINGS = settings(max_examples=60, deadline=None)
distinct_lists = st.lists(st.integers(-500, 500), min_size=2, max_size=10, unique=True)


def _prompt(values):
    return so.PROMPT_PREFIX + " ".join(map(str, values))


def _text(values):
    return " ".join(map(str, values))


@SETTINGS
@given(values=distinct_lists)
def test_sorted_scores_one_and_reversed_scores_zero(values):
    prompt = _prompt(values)
    assert so.quality(prompt, _text(sorted(values))) == 1.0
    assert so.quality(prompt, _text(sorted(values, reverse=True))) == 0.0
    assert so.SortingTask().verify(prompt, _text(sorted(values)))
    assert not so.SortingTask().verify(prompt, _text(sorted(values, reverse=True)))


@SETTINGS
@given(values=st.lists(st.integers(0, 5), min_size=2, max_size=8), data=st.data())
def test_quality_is_the_in_order_fraction_and_ignores_prompt_order(values, data):
    response = data.draw(st.permutations(values))
    shuffled_prompt = data.draw(st.permutations(values))
    q = so.quality(_prompt(values), _text(response))
    expected = sum(a <= b for a, b in zip(response, response[1:])) / (len(values) - 1)
    assert q == pytest.approx(expected)
    assert so.quality(_prompt(shuffled_prompt), _text(response)) == q  # multiset only


@pytest.mark.parametrize(
    "response,quality,reason",
    [
        ("1 3 5 9", 1.0, ""),
        ("1, 3, 5, 9", 1.0, ""),
        ("  1 3\n5 9 ", 1.0, ""),
        ("3 1 5 9", 2 / 3, ""),
        ("9 5 3 1", 0.0, ""),
        ("1 3 5", 0.0, "missing [9]"),
        ("1 3 5 9 9", 0.0, "extra [9]"),
        ("1 3 5 7", 0.0, "missing [9]"),
        ("1 3 5 x", 0.0, "token 3 ('x') is not an integer"),
        ("", 0.0, "empty"),
        ("sorted: 1 3 5 9", 0.0, "token 0"),
        ("1 3 5 9.0", 0.0, "token 3"),
    ],
)
def test_hand_cases_and_malformed_reasons(response, quality, reason):
    d = so.details("sort: 5 3 9 1", response)
    assert d.quality == pytest.approx(quality)
    assert so.SortingTask().gold_reward("sort: 5 3 9 1", response) == pytest.approx(quality)
    assert d.ok == (reason == "")
    assert reason in d.reason


@SETTINGS
@given(
    values=st.lists(st.integers(-50, 50), min_size=2, max_size=9),
    k=st.integers(1, 4),
    seed=st.integers(0, 2**32),
)
def test_corrupt_makes_strictly_worse_permutations(values, k, seed):
    prompt, response = _prompt(values), _text(sorted(values))
    if len(set(values)) == 1:  # all equal: nothing can be out of order
        with pytest.raises(ValueError, match="no swap makes"):
            so.corrupt(response, k, seed)
        return
    worse = so.corrupt(response, k, seed)
    assert worse == so.corrupt(response, k, seed)
    assert so.details(prompt, worse).ok  # still a permutation: worse, not malformed
    assert so.quality(prompt, worse) < 1.0
    # Each further swap is strictly worse again, until no single swap can lower it.
    previous = so.quality(prompt, response)
    for i in range(1, k + 1):
        q = so.quality(prompt, so.corrupt(response, i, seed))
        assert q <= previous
        if q == previous:
            assert so.corrupt(response, i, seed) == so.corrupt(response, i - 1, seed)
        previous = q


def test_corrupt_edge_cases():
    assert so.corrupt("1 2 3", 0, 0) == "1 2 3"
    with pytest.raises(ValueError, match="no swap makes"):
        so.corrupt("3 2 1", 1, 0)
    assert so.corrupt("1 2", 5, 0) == "2 1"  # stops once nothing can get worse
    with pytest.raises(ValueError, match="no swap makes"):  # one ascent, yet no swap removes it
        so.corrupt("2 1 4 3", 1, 0)
    with pytest.raises(ValueError, match="cannot parse"):
        so.corrupt("1 two 3", 1, 0)
    with pytest.raises(ValueError, match="k must be"):
        so.corrupt("1 2 3", -1, 0)


def test_demonstrations_deterministic_held_out_and_knobs():
    task = so.SortingTask(length=(3, 5), value_range=(0, 9), distinct=False)
    demos = task.demonstrations("train", 100, seed=0)
    assert demos == task.demonstrations("train", 100, seed=0)
    assert demos != task.demonstrations("train", 100, seed=1)
    assert all(task.verify(p, r) for p, r in demos)
    prompts = [p for p, _ in demos]
    assert not set(prompts) & set(task.prompts("test", 50, seed=0))
    for p in prompts:
        values = so.parse_prompt(p)
        assert 3 <= len(values) <= 5 and all(0 <= v <= 9 for v in values)
    assert any(len(set(so.parse_prompt(p))) < len(so.parse_prompt(p)) for p in prompts)
    for p in so.SortingTask(value_range=(10, 20)).prompts("validation", 30, seed=0):
        values = so.parse_prompt(p)
        assert len(set(values)) == len(values) and all(10 <= v <= 20 for v in values)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"length": (1, 3)}, "length"),
        ({"length": (5, 4)}, "length"),
        ({"value_range": (9, 0)}, "value_range"),
        ({"value_range": (0, 3)}, "distinct"),
    ],
)
def test_bad_knobs_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        so.SortingTask(**kwargs)


@pytest.mark.parametrize("prompt", ["compute: 1+2", "sort:", "sort: 1 b 3"])
def test_bad_prompt_is_a_clear_error(prompt):
    with pytest.raises(ValueError, match="sorting prompt"):
        so.details(prompt, "1 2 3")
