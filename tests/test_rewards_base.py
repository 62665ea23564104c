"""`alignment.rewards`: the checked signature, programmatic rewards, the pairwise preference
model, config errors, and the model rewards (reward model, log-ratio) against manual forwards."""

import math

import jax
import numpy as np
import pytest
from flax import nnx

from alignment import models, rewards, tasks
from alignment.rewards import RewardInputs
from alignment.tokenizer import tiny_tokenizer


def _inputs(prompts, responses):
    return RewardInputs.from_text(prompts, responses)


# ----------------------------------------------------------------------------------- checked()
def test_checked_passes_good_output_as_float32():
    fn = rewards.checked(lambda x: np.arange(len(x)), "count")
    out = fn(_inputs(["a", "b", "c"], ["x", "y", "z"]))
    assert out.dtype == np.float32 and out.tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda n: np.array([1.0, np.nan, 2.0]), "reward 'mine' returned nan for row 1"),
        (lambda n: np.array([1.0, 2.0, np.inf]), "reward 'mine' returned inf for row 2"),
        (lambda n: np.zeros((n, 1)), r"reward 'mine' returned shape \(3, 1\) for 3 responses"),
        (lambda n: np.zeros(n - 1), r"reward 'mine' returned shape \(2,\) for 3 responses"),
        (lambda n: [0.0] * (n + 1), "reward 'mine' returned a list.*has 4 entries"),
        (lambda n: 1.0, "reward 'mine' returned float"),
        (lambda n: np.array(["a"] * n), "reward 'mine' returned dtype"),
    ],
)
def test_checked_names_the_reward_and_the_row(bad, match):
    fn = rewards.checked(lambda x: bad(len(x)), "mine")
    with pytest.raises(ValueError, match=match):
        fn(_inputs(["p"] * 3, ["r"] * 3))


def test_reward_inputs_must_be_aligned():
    with pytest.raises(ValueError, match="responses has 1 entries but prompts has 2"):
        RewardInputs(["a", "b"], ["x"], [[1], [2]], [[3], [4]])
    with pytest.raises(TypeError, match="expects RewardInputs"):
        rewards.checked(lambda x: np.zeros(1), "r")(["a"])


# ----------------------------------------------------------------------------------- programmatic
def test_task_and_verifier_rewards_on_hand_made_cases():
    prompts = ["sort: 3 1 2", "sort: 3 1 2", "sort: 3 1 2"]
    responses = ["1 2 3", "2 1 3", "banana"]
    gold = rewards.task_reward("sorting")(_inputs(prompts, responses))
    np.testing.assert_allclose(gold, [1.0, 0.5, 0.0])
    ok = rewards.verifier_reward(tasks.get_task("sorting"))(_inputs(prompts, responses))
    np.testing.assert_array_equal(ok, [1.0, 0.0, 0.0])
    cfg = rewards.default_reward_config()
    cfg.kind, cfg.task = "verifier", "arithmetic"
    fn = rewards.make_reward(cfg)
    np.testing.assert_array_equal(
        fn(_inputs(["compute: 2+3"] * 2, ["answer: 5", "answer: 6"])), [1.0, 0.0]
    )
    cfg.kind, cfg.task, cfg.scale = "task", "sentiment", 2.0
    r = rewards.make_reward(cfg)(_inputs(["the movie was"] * 2, [" wonderful.", " awful."]))
    task = tasks.get_task("sentiment")
    np.testing.assert_allclose(
        r,
        [
            2 * task.gold_reward("the movie was", " wonderful."),
            2 * task.gold_reward("the movie was", " awful."),
        ],
        rtol=1e-6,
    )
    assert r[0] > 0 > r[1]


def test_verifier_of_a_graded_task_and_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="task 'sentiment' has no verifier"):
        rewards.verifier_reward("sentiment")
    cfg = rewards.default_reward_config()
    for updates, match in [
        ({"kind": "oracle"}, "reward.kind='oracle' is not one of"),
        ({"kind": "task", "task": "sortnig"}, "needs reward.task"),
        ({"kind": "reward_model"}, "needs reward.path"),
        ({"kind": "log_ratio", "path": "/x"}, "needs reward.base_path"),
        ({"kind": "task", "task": "sorting", "batch_size": 0}, "batch_size must be"),
        (
            {"kind": "task", "task": "sorting", "preference_temperature": 0.0},
            "preference_temperature",
        ),
    ]:
        c = cfg.copy_and_resolve_references()
        c.update(updates)
        with pytest.raises(ValueError, match=match):
            rewards.make_reward(c)


# ----------------------------------------------------------------------------------- preference
def test_pairwise_preference_is_bradley_terry_of_the_reward():
    pref = rewards.PairwisePreference(rewards.task_reward("sorting"), temperature=0.5)
    a = _inputs(["sort: 3 1 2"] * 3, ["1 2 3", "2 1 3", "1 2 3"])
    b = _inputs(["sort: 3 1 2"] * 3, ["2 1 3", "1 2 3", "1 2 3"])
    p = pref(a, b)
    s = 1 / (1 + math.exp(-0.5 / 0.5))
    np.testing.assert_allclose(p, [s, 1 - s, 0.5], rtol=1e-6)
    np.testing.assert_allclose(pref(a, b) + pref(b, a), 1.0, rtol=1e-6)  # P(a>b) + P(b>a) = 1
    labels = pref.sample(
        _inputs(["sort: 3 1 2"] * 4000, ["1 2 3"] * 4000),
        _inputs(["sort: 3 1 2"] * 4000, ["2 1 3"] * 4000),
        seed=0,
    )
    assert abs(labels.mean() - s) < 0.03
    with pytest.raises(ValueError, match="row 0 compares responses to different prompts"):
        pref(_inputs(["x"], ["1"]), _inputs(["y"], ["1"]))
    cfg = rewards.default_reward_config()
    cfg.task = "sorting"
    assert rewards.make_preference(cfg, temperature=2.0).temperature == 2.0


# ----------------------------------------------------------------------------------- model rewards
def _tiny(**kw):
    return models.get_preset(
        "tiny",
        vocab_size=tiny_tokenizer().vocab_size,
        d_model=32,
        d_ff=64,
        head_dim=8,
        n_layers=2,
        max_seq_len=48,
        **kw,
    )


def _model_inputs(tok):
    prompts = ["sort: 3 1 2\n", "sort: 9 8\n", "sort: 5 5 1 4\n"]
    responses = ["1 2 3", "8 9 9 9 9", ""]
    return RewardInputs.from_text(prompts, responses, tok)


def test_reward_model_reward_equals_the_score_at_eos_and_ignores_batching(tmp_path):
    tok = tiny_tokenizer()
    rm = models.Transformer(_tiny(num_labels=1, has_lm_head=False), rngs=nnx.Rngs(0))
    models.save_pretrained(rm, tmp_path / "rm", pad_token_id=tok.pad_id)
    tok.save(tmp_path / "rm")
    inputs = _model_inputs(tok)
    cfg = rewards.default_reward_config()
    cfg.kind, cfg.path, cfg.batch_size, cfg.length_bucket = (
        "reward_model",
        str(tmp_path / "rm"),
        2,
        8,
    )
    got = rewards.make_reward(cfg)(inputs)  # tokenizer (EOS) read from the folder
    # manual: the hidden state at each row's last token (prompt + response + EOS) times the score
    # column; right padding leaves a causal model's states at real positions unchanged
    graphdef, state = models.split(rm)
    hidden_fn = jax.jit(lambda st, x: models.merge(graphdef, st)(x, return_hidden=True))
    w = np.asarray(rm.score[...])[:, 0]

    def manual(eos):
        seqs = [
            p + r + ([tok.eos_id] if eos else [])
            for p, r in zip(inputs.prompt_ids, inputs.response_ids)
        ]
        ids = np.zeros((len(seqs), 24), np.int32)
        for i, seq in enumerate(seqs):
            ids[i, : len(seq)] = seq
        hidden = np.asarray(hidden_fn(state, ids))
        return np.array([hidden[i, len(seq) - 1] @ w for i, seq in enumerate(seqs)])

    np.testing.assert_allclose(got, manual(True), rtol=1e-5, atol=1e-5)
    cfg.batch_size, cfg.length_bucket, cfg.append_eos = 8, 32, False
    no_eos = rewards.make_reward(cfg, tokenizer=tok)(inputs)
    np.testing.assert_allclose(no_eos, manual(False), rtol=1e-5, atol=1e-5)
    assert not np.allclose(no_eos, got)
    # a causal LM is not a reward model; an over-long row names its index
    lm = models.Transformer(_tiny(), rngs=nnx.Rngs(0))
    models.save_pretrained(lm, tmp_path / "lm")
    cfg.path = str(tmp_path / "lm")
    with pytest.raises(ValueError, match="not a one-label reward model"):
        rewards.make_reward(cfg)
    cfg.path, cfg.append_eos = str(tmp_path / "rm"), True
    long = RewardInputs.from_text(["sort: 1 2\n", "x" * 60], ["1 2", "y"], tok)
    with pytest.raises(ValueError, match="row 1 has 63 tokens.*max_seq_len=48"):
        rewards.make_reward(cfg)(long)


def test_log_ratio_reward_equals_a_manual_log_prob_difference(tmp_path):
    tok = tiny_tokenizer()
    tuned = models.Transformer(_tiny(), rngs=nnx.Rngs(1))
    base = models.Transformer(_tiny(), rngs=nnx.Rngs(2))
    models.save_pretrained(tuned, tmp_path / "tuned")
    models.save_pretrained(base, tmp_path / "base")
    inputs = _model_inputs(tok)
    cfg = rewards.default_reward_config()
    cfg.kind, cfg.path, cfg.base_path, cfg.batch_size = (
        "log_ratio",
        str(tmp_path / "tuned"),
        str(tmp_path / "base"),
        2,
    )
    cfg.scale = 0.1
    got = rewards.make_reward(cfg, tokenizer=tok)(inputs)
    # manual: float64 log-softmax of full logits; right padding leaves a causal model's logits at
    # real positions unchanged, so the rows share one padded forward per model
    seqs = [p + r + [tok.eos_id] for p, r in zip(inputs.prompt_ids, inputs.response_ids)]
    ids = np.zeros((len(seqs), max(map(len, seqs))), np.int32)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)] = seq
    graphdef, _ = models.split(tuned)
    logits_fn = jax.jit(lambda st, x: models.merge(graphdef, st)(x))

    def seq_logps(model):
        logp = jax.nn.log_softmax(
            np.asarray(logits_fn(models.split(model)[1], ids), np.float64), axis=-1
        )
        return np.array(
            [
                sum(float(logp[i, t - 1, seq[t]]) for t in range(len(p), len(seq)))
                for i, (p, seq) in enumerate(zip(inputs.prompt_ids, seqs))
            ]
        )

    np.testing.assert_allclose(
        got, 0.1 * (seq_logps(tuned) - seq_logps(base)), rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ValueError, match="row 0 has no prompt tokens"):
        rewards.make_reward(cfg, tokenizer=tok)(RewardInputs(["p"], ["r"], [[]], [[5]]))
