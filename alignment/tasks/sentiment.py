"""Controlled-sentiment continuation in miniature, with a VADER gold reward.

The controlled-sentiment task of "Direct Preference Optimization" (Rafailov et al., 2023):
continue a review opening so that the text is positive. Prompts come from a deterministic
template grammar of sentiment-neutral openings ("last night the pasta was"); the gold reward is
the VADER compound score in [-1, 1] (Hutto & Gilbert, 2014) of opening + continuation;
demonstrations are grammar continuations of mixed polarity, the raw material of an SFT model.
`noisy_bradley_terry_labels` turns gold scores into noisy preference labels, as a stand-in for
human raters when training a proxy reward (the RSO setting, Liu et al., 2024).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import ClassVar

import numpy as np
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from alignment.tasks import base

# Every opening below scores exactly 0 under VADER (tests check it), so the gold reward
# measures the continuation alone.
LEAD_INS = (
    "",
    "last night ",
    "yesterday ",
    "this morning ",
    "last summer ",
    "in the end ",
    "at first glance ",
    "looking back, ",
    "if you ask me, ",
    "frankly, ",
    "between you and me, ",
    "my sister said ",
    "my brother thinks ",
    "my mother told me ",
    "we all felt ",
    "i guess ",
    "on the weekend ",
    "when we visited, ",
    "overall, ",
    "i have to say ",
)
SUBJECTS = (
    "the movie",
    "the food",
    "the service",
    "the book",
    "the hotel room",
    "the concert",
    "the ending",
    "the soundtrack",
    "the acting",
    "the coffee",
    "the plot",
    "the dessert",
    "the show",
    "the museum",
    "the tour guide",
    "the waiter",
    "the game",
    "the trip",
    "the flight",
    "the lecture",
    "the pizza",
    "the beach",
    "the album",
    "the series",
    "the documentary",
    "the wine",
    "the breakfast",
    "the garden",
    "the apartment",
    "the class",
    "the phone",
    "the laptop",
    "the headphones",
    "the bakery",
    "the market",
    "the hike",
    "the train ride",
    "the podcast",
    "the soup",
    "the sushi",
)
FRAMES = (
    "{s} was",
    "i thought {s} was",
    "{s} turned out to be",
    "{s} felt",
    "{s} seemed",
    "i found {s} to be",
    "{s} looked",
    "{s} is",
)

POLARITIES = ("positive", "negative", "neutral", "mixed")
_BOOSTERS = ("", "really ", "quite ", "absolutely ", "very ", "extremely ")
_POSITIVE = (
    "wonderful",
    "great",
    "delightful",
    "fantastic",
    "lovely",
    "excellent",
    "charming",
    "brilliant",
    "superb",
    "enjoyable",
)
_NEGATIVE = (
    "awful",
    "terrible",
    "boring",
    "disappointing",
    "tedious",
    "horrible",
    "dreadful",
    "dull",
    "miserable",
    "annoying",
)
_NEUTRAL = (
    "long",
    "quiet",
    "about what i expected",
    "fairly ordinary",
    "on the small side",
    "similar to the last one",
    "in english",
    "a bit late",
)
_POSITIVE_TAILS = (
    "and i would happily go back",
    "and i loved every minute",
    "and it made my day",
    "and i recommend it to everyone",
    "and we smiled all day",
)
_NEGATIVE_TAILS = (
    "and i regret going",
    "and it was a waste of money",
    "and i hated every minute",
    "and it ruined the evening",
    "and i felt sad afterwards",
)
_NEUTRAL_TAILS = (
    "and then we went home",
    "and it lasted two hours",
    "and we took the bus",
    "and the room was on the third floor",
    "and we left at nine",
)


@functools.lru_cache(maxsize=1)
def _analyzer():
    return SentimentIntensityAnalyzer()


def vader_compound(text: str) -> float:
    """VADER compound score of `text`, in [-1, 1]."""
    return float(_analyzer().polarity_scores(text)["compound"])


@functools.lru_cache(maxsize=1)
def all_openings() -> tuple[str, ...]:
    """Every opening the grammar produces, in a fixed order."""
    return tuple(
        lead + frame.format(s=subject)
        for lead, frame, subject in itertools.product(LEAD_INS, FRAMES, SUBJECTS)
    )


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[rng.integers(len(options))]


def sample_continuation(rng: np.random.Generator, polarity: str) -> str:
    """A grammar continuation of the given polarity (one of POLARITIES), e.g. ' lovely, and ...'."""
    if polarity == "positive":
        text = f"{_pick(rng, _BOOSTERS)}{_pick(rng, _POSITIVE)}, {_pick(rng, _POSITIVE_TAILS)}"
    elif polarity == "negative":
        text = f"{_pick(rng, _BOOSTERS)}{_pick(rng, _NEGATIVE)}, {_pick(rng, _NEGATIVE_TAILS)}"
    elif polarity == "neutral":
        text = f"{_pick(rng, _NEUTRAL)}, {_pick(rng, _NEUTRAL_TAILS)}"
    elif polarity == "mixed":
        good, bad = _pick(rng, _POSITIVE), _pick(rng, _NEGATIVE)
        first, second = (good, bad) if rng.random() < 0.5 else (bad, good)
        text = f"{first} at first but {second} by the end"
    else:
        raise ValueError(f"unknown polarity {polarity!r}; valid: {', '.join(POLARITIES)}")
    return " " + text + "."


def noisy_bradley_terry_labels(gold_a, gold_b, *, temperature: float, seed: int) -> np.ndarray:
    """Preference labels drawn from the gold scorer: True where a is preferred to b.

    P(a > b) = sigmoid((gold_a - gold_b) / temperature) (Bradley & Terry, 1952); a small
    temperature gives nearly noiseless labels, a large one nearly coin flips.
    """
    a = np.asarray(gold_a, dtype=np.float64)
    b = np.asarray(gold_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(
            f"noisy_bradley_terry_labels: gold_a has shape {a.shape} but gold_b has shape {b.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(
            "noisy_bradley_terry_labels: gold scores contain NaN or Inf at "
            f"a[{np.flatnonzero(~np.isfinite(a)).tolist()}], "
            f"b[{np.flatnonzero(~np.isfinite(b)).tolist()}] (flattened indices)"
        )
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"noisy_bradley_terry_labels: temperature must be > 0, got {temperature}")
    # sigmoid via tanh: no overflow warnings for large |diff| / temperature.
    p_a = 0.5 * (1.0 + np.tanh(0.5 * (a - b) / temperature))
    return np.random.default_rng(seed).random(a.shape) < p_a


@dataclasses.dataclass(frozen=True)
class SentimentTask(base.Task):
    """Continue a neutral review opening; gold reward = VADER compound of the full text.

    `polarity_weights` sets how often demonstrations are positive, negative, neutral or mixed.
    With `score_prompt=False` only the continuation is scored.
    """

    name: ClassVar[str] = "sentiment"
    has_verifier: ClassVar[bool] = False

    polarity_weights: tuple[float, float, float, float] = (0.25, 0.25, 0.25, 0.25)
    score_prompt: bool = True

    def __post_init__(self):
        w = np.asarray(self.polarity_weights, dtype=np.float64)
        if (
            w.shape != (len(POLARITIES),)
            or not np.isfinite(w).all()
            or (w < 0).any()
            or w.sum() <= 0
        ):
            raise ValueError(
                f"SentimentTask.polarity_weights must be {len(POLARITIES)} "
                f"non-negative weights for {POLARITIES}, got {self.polarity_weights}"
            )
        object.__setattr__(self, "polarity_weights", tuple(float(x) for x in w))

    def prompts(self, split: str, n: int, seed: int) -> list[str]:
        return base.choose_from_pool(all_openings(), task=self.name, split=split, n=n, seed=seed)

    def labelled_demonstrations(self, split: str, n: int, seed: int) -> list[tuple[str, str, str]]:
        """(prompt, continuation, polarity) triples; `demonstrations` without the polarity."""
        rng = base.make_rng(self.name, split, seed, "demonstrations")
        p = np.asarray(self.polarity_weights) / sum(self.polarity_weights)
        out = []
        for prompt in self.prompts(split, n, seed):
            polarity = POLARITIES[rng.choice(len(POLARITIES), p=p)]
            out.append((prompt, sample_continuation(rng, polarity), polarity))
        return out

    def demonstrations(self, split: str, n: int, seed: int) -> list[tuple[str, str]]:
        return [(p, r) for p, r, _ in self.labelled_demonstrations(split, n, seed)]

    def gold_reward(self, prompt: str, response: str) -> float:
        """VADER compound of `prompt + response` (or of `response` alone), in [-1, 1]."""
        return vader_compound(f"{prompt} {response}" if self.score_prompt else response)
