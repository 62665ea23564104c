"""The Bradley-Terry reward-model loss (closed form, gradient, knobs, bad input) and the
reward-model learner on hand-made scores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignment import losses
from alignment.learners import reward_model


def test_bradley_terry_closed_form_and_metrics():
    sc = np.array([2.0, 0.0, -1.0, 0.5], np.float32)
    sr = np.array([1.0, 0.5, -1.0, -2.0], np.float32)
    loss, m = losses.get("bradley_terry")(chosen_scores=sc, rejected_scores=sr)
    d = (sc - sr).astype(np.float64)
    np.testing.assert_allclose(float(loss), np.mean(np.log1p(np.exp(-d))), rtol=1e-6)
    np.testing.assert_allclose(m["losses"], np.log1p(np.exp(-d)), rtol=1e-6)
    np.testing.assert_array_equal(m["accuracy"], [1.0, 0.0, 0.0, 1.0])  # a tie is not a win
    np.testing.assert_allclose(m["margin"], d)
    assert losses.family("bradley_terry") == "reward_model"
    # at s_c = s_r the loss is log 2 and d loss / d s_c = -sigmoid(0) / B
    g = jax.grad(
        lambda c: losses.get("bradley_terry")(chosen_scores=c, rejected_scores=jnp.zeros(4))[0]
    )(jnp.zeros(4))
    np.testing.assert_allclose(g, -0.5 / 4, rtol=1e-6)


def test_margin_and_centering_as_in_trl():
    sc = np.array([1.0, 3.0], np.float32)
    sr = np.array([0.0, 1.0], np.float32)
    margins = np.array([0.5, 4.0], np.float32)
    loss, _ = losses.get("bradley_terry")(
        chosen_scores=sc,
        rejected_scores=sr,
        margins=margins,
        margin=0.25,
        center_rewards_coefficient=0.1,
    )
    d = sc - sr - margins - 0.25
    want = np.mean(np.log1p(np.exp(-d))) + 0.1 * np.mean((sc + sr) ** 2)
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    # the centering term pulls a shifted pair back towards zero mean: d/dc_i mean((2c - 100)^2) =
    # 2 (2 c_i - 100) (the log-sigmoid term is ~0 at a margin of 100)
    g = jax.grad(
        lambda c: losses.get("bradley_terry")(
            chosen_scores=c, rejected_scores=c - 100.0, center_rewards_coefficient=1.0
        )[0]
    )(jnp.full((2,), 60.0))
    np.testing.assert_allclose(g, 2 * (120.0 - 100.0), rtol=1e-4)


def test_bad_scores_are_named():
    bt = losses.get("bradley_terry")
    with pytest.raises(ValueError, match="chosen_scores"):
        bt(chosen_scores=np.array([np.nan, 1.0]), rejected_scores=np.zeros(2))
    with pytest.raises(ValueError, match="shape mismatch"):
        bt(chosen_scores=np.zeros(3), rejected_scores=np.zeros(2))
    with pytest.raises(ValueError, match="rank 1"):
        bt(chosen_scores=np.zeros((2, 2)), rejected_scores=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="center_rewards_coefficient"):
        bt(chosen_scores=np.zeros(2), rejected_scores=np.zeros(2), center_rewards_coefficient=-1.0)


def test_learner_interleaves_pairs_and_reports_scores():
    # a "model" whose score is the sum of a row's token ids (padding is 0): known scores per row
    def score_fn(params, ids, attn):
        return params * jnp.sum(ids * attn, axis=-1).astype(jnp.float32)

    batch = {
        "chosen_input_ids": jnp.array([[3, 2, 0], [1, 1, 1]]),
        "chosen_attention_mask": jnp.array([[1, 1, 0], [1, 1, 1]]),
        "rejected_input_ids": jnp.array([[1, 0, 0], [4, 0, 0]]),
        "rejected_attention_mask": jnp.array([[1, 0, 0], [1, 0, 0]]),
    }
    sc, sr = reward_model.pair_scores(score_fn, 1.0, batch)
    np.testing.assert_array_equal(sc, [5.0, 3.0])
    np.testing.assert_array_equal(sr, [1.0, 4.0])
    loss, w, m = reward_model.reward_model_loss(
        score_fn, 1.0, batch, loss_fn=losses.get("bradley_terry"), loss_kwargs={}
    )
    assert float(w) == 2.0 and float(m["accuracy"]) == 0.5
    np.testing.assert_allclose(float(m["margin"]), ((5 - 1) + (3 - 4)) / 2)
    np.testing.assert_allclose(
        float(loss), np.mean(np.log1p(np.exp(-np.array([4.0, -1.0])))), rtol=1e-6
    )
    with pytest.raises(KeyError, match="reward-model batch is missing"):
        reward_model.reward_model_loss(
            score_fn,
            1.0,
            {"chosen_input_ids": batch["chosen_input_ids"]},
            loss_fn=losses.get("bradley_terry"),
            loss_kwargs={},
        )
    with pytest.raises(ValueError, match="requires \\['policy_chosen_logps'"):
        reward_model.check_supported(losses.get("dpo"))


def test_check_supported_reads_the_loss_inputs_from_the_losses_package():
    def scaled(*, chosen_scores, rejected_scores, scale):  # a knob without a default
        return jnp.mean(scale * (rejected_scores - chosen_scores)), {}

    assert losses.inputs(scaled) == ("chosen_scores", "rejected_scores")
    reward_model.check_supported(scaled, loss_kwargs=["scale"])
    with pytest.raises(ValueError, match="requires \\['scale'\\]"):
        reward_model.check_supported(scaled)
    with pytest.raises(ValueError, match="requires \\['ref_chosen_logps'"):
        reward_model.check_supported(lambda *, ref_chosen_logps, chosen_scores: (0.0, {}))
