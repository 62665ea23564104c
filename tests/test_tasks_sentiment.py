"""Sentiment continuation: neutral prompt grammar, VADER gold reward, noisy Bradley-Terry labels."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignment.tasks import sentiment as se
from alignment.tasks.base import split_of

SETTINGS = settings(max_examples=40, deadline=None)


def test_every_opening_is_distinct_and_sentiment_neutral():
    openings = se.all_openings()
    assert len(openings) == len(set(openings)) == 6400
    scores = np.array([se.vader_compound(o) for o in openings])
    # The gold reward must measure the continuation: fix the grammar if an opening scores.
    assert np.all(scores == 0.0), [o for o, s in zip(openings, scores) if s != 0.0][:5]


def test_clearly_positive_beats_clearly_negative():
    task = se.SentimentTask()
    prompt = "i thought the food was"
    positive = task.gold_reward(prompt, " absolutely wonderful, and i loved every minute.")
    negative = task.gold_reward(prompt, " awful, and it was a waste of money.")
    neutral = task.gold_reward(prompt, " about what i expected, and then we went home.")
    assert positive > 0.5 > 0.0 == neutral > -0.5 > negative
    # Golden VADER scores of the shipped lexicon; a change means vaderSentiment changed.
    assert positive == pytest.approx(0.8357, abs=1e-4) and negative == pytest.approx(
        -0.7003, abs=1e-4
    )


@SETTINGS
@given(seed=st.integers(0, 2**32), index=st.integers(0, 6399))
def test_grammar_polarities_order_the_gold_reward(seed, index):
    task = se.SentimentTask()
    prompt = se.all_openings()[index]
    rng = np.random.default_rng(seed)
    pos = task.gold_reward(prompt, se.sample_continuation(rng, "positive"))
    neu = task.gold_reward(prompt, se.sample_continuation(rng, "neutral"))
    neg = task.gold_reward(prompt, se.sample_continuation(rng, "negative"))
    assert pos > 0.4 and neu == 0.0 and neg < -0.4
    assert -1.0 <= neg < neu < pos <= 1.0


def test_score_prompt_option_and_negation_context():
    # VADER reads negation from the words before: scoring the full text is what a reader sees.
    assert se.SentimentTask().gold_reward("the movie was not", " good.") < 0.0
    assert se.SentimentTask(score_prompt=False).gold_reward("the movie was not", " good.") > 0.0


def test_prompts_deterministic_distinct_and_held_out():
    task = se.SentimentTask()
    train = task.prompts("train", 500, seed=0)
    assert train == task.prompts("train", 500, seed=0) != task.prompts("train", 500, seed=1)
    assert len(set(train)) == 500
    test = task.prompts("test", 200, seed=0)
    assert not set(train) & set(test)
    assert {split_of(p) for p in test} == {"test"}
    held_out = sum(split_of(o) == "test" for o in se.all_openings())
    with pytest.raises(ValueError, match=f"holds {held_out} distinct prompts"):
        task.prompts("test", held_out + 1, seed=0)


def test_demonstrations_mix_polarities_with_the_configured_weights():
    task = se.SentimentTask()
    demos = task.labelled_demonstrations("train", 400, seed=0)
    assert [p for p, _, _ in demos] == task.prompts("train", 400, seed=0)
    counts = {pol: sum(d[2] == pol for d in demos) for pol in se.POLARITIES}
    assert all(60 <= c <= 140 for c in counts.values()), counts
    assert task.demonstrations("train", 400, 0) == [(p, r) for p, r, _ in demos]
    positive_only = se.SentimentTask(polarity_weights=(1, 0, 0, 0))
    for prompt, response in positive_only.demonstrations("validation", 50, seed=2):
        assert positive_only.gold_reward(prompt, response) > 0.4
    with pytest.raises(ValueError, match="polarity_weights"):
        se.SentimentTask(polarity_weights=(1, 0, 0))
    with pytest.raises(ValueError, match="unknown polarity"):
        se.sample_continuation(np.random.default_rng(0), "angry")


def test_sentiment_has_no_verifier():
    task = se.SentimentTask()
    assert not task.has_verifier
    with pytest.raises(NotImplementedError, match="graded"):
        task.verify("the movie was", " great.")


@pytest.mark.parametrize(
    "diff,temperature", [(0.0, 1.0), (0.5, 0.25), (-1.0, 0.5), (1.5, 2.0), (0.2, 0.1)]
)
def test_noisy_labels_empirical_rate_matches_the_sigmoid(diff, temperature):
    n = 40_000
    gold_b = np.random.default_rng(1).uniform(-1, 1, n)
    labels = se.noisy_bradley_terry_labels(gold_b + diff, gold_b, temperature=temperature, seed=7)
    assert labels.dtype == bool and labels.shape == (n,)
    p = 1.0 / (1.0 + np.exp(-diff / temperature))
    assert abs(labels.mean() - p) < 4.0 * np.sqrt(p * (1 - p) / n) + 1e-9, (labels.mean(), p)


def test_noisy_labels_deterministic_limits_and_errors():
    a, b = np.array([[0.9, -0.2], [0.1, 0.0]]), np.array([[0.1, 0.3], [0.1, 0.5]])
    first = se.noisy_bradley_terry_labels(a, b, temperature=0.3, seed=3)
    assert first.shape == (2, 2)
    assert np.array_equal(first, se.noisy_bradley_terry_labels(a, b, temperature=0.3, seed=3))
    # A tiny temperature makes labels the noiseless comparison (ties aside).
    sharp = se.noisy_bradley_terry_labels(a, b, temperature=1e-6, seed=0)
    assert sharp[0, 0] and not sharp[0, 1] and not sharp[1, 1]
    with pytest.raises(ValueError, match="shape"):
        se.noisy_bradley_terry_labels([0.1, 0.2], [0.1], temperature=1.0, seed=0)
    with pytest.raises(ValueError, match="NaN"):
        se.noisy_bradley_terry_labels([0.1, np.nan], [0.1, 0.2], temperature=1.0, seed=0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            se.noisy_bradley_terry_labels([0.1], [0.2], temperature=bad, seed=0)
