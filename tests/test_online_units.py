"""Online learners, unit level: sampler old log-probs == a fresh forward, a zero-advantage PPO
update leaves the policy unchanged, clip-fraction / KL metrics on hand-made values, preference
pair slots (ties never paired, zero-weight slots give zero gradient), dataset pairs and SAIL-DP's
relabelling, and the bad-input errors (group size, NaN reward, over-long prompt, bad options)."""

import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from alignment import engine as T
from alignment import losses, models, optim, rewards, sharding, tasks
from alignment.engine import config as config_files
from alignment.learners import online, online_pairs, pg, rollout
from alignment.rewards.base import RewardInputs
from alignment.tokenizer import tiny_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(name, arg="tiny"):
    return config_files.get_config(REPO / "configs" / f"{name}.py", arg)


def _tiny_model(tok):
    return models.get_preset(
        "tiny",
        vocab_size=tok.vocab_size,
        max_seq_len=64,
        d_model=32,
        d_ff=64,
        head_dim=8,
        n_layers=1,
    )


def _optim(**kw):
    base = dict(
        name="adamw",
        learning_rate=1e-2,
        schedule="constant",
        warmup_steps=0,
        end_lr_factor=1.0,
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        weight_decay=0.0,
        decay_min_ndim=2,
        no_decay_regex=r"(norm|bias|embed)",
        max_grad_norm=1.0,
        freeze_regex="",
    )
    base.update(kw)
    return ml_collections.ConfigDict(base)


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer()
    # one device keeps compiles short; sharded == unsharded is the engine's tests' business
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    graphdef, params, shardings = T.init_params(_tiny_model(tok), mesh, seed=0)
    prompts = ["sort: 3 1 2", "sort: 9 4", "compute: 1+2", "x"] * 2
    ids, mask, _ = rollout.encode_prompt_batch(tok, prompts, chat_template=False, max_prompt_len=16)
    sampler = rollout.make_sampler(
        graphdef,
        max_new_tokens=6,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        stop_ids=(tok.eos_id,),
        pad_id=tok.pad_id,
    )
    out = sampler(params, ids, mask, jax.random.PRNGKey(0))
    tokens, logprobs, lengths = jax.device_get((out.tokens, out.logprobs, out.lengths))
    batch = rollout.assemble(ids, mask, tokens, logprobs, lengths, tok.pad_id)
    return dict(
        tok=tok,
        mesh=mesh,
        graphdef=graphdef,
        params=params,
        shardings=shardings,
        batch=batch,
        lengths=lengths,
    )


def test_sampler_old_logps_equal_a_fresh_forward(setup):
    b = setup["batch"]
    assert b["input_ids"].shape == (8, 22) and (b["loss_mask"].sum(1) == setup["lengths"]).all()
    fresh = rollout.make_forward(setup["graphdef"], 8)(
        setup["params"], b["input_ids"], b["attention_mask"], b["loss_mask"]
    )
    np.testing.assert_allclose(np.asarray(fresh), b["old_logps"], atol=1e-5)
    # the learner's own forward (log-probs + entropy + values in one pass) agrees too
    outputs = jax.jit(
        lambda p, i, a, m: pg.policy_outputs(setup["graphdef"], p, None, i, a, m, chunk_size=8)
    )
    logps, entropy, _ = outputs(
        setup["params"], b["input_ids"], b["attention_mask"], b["loss_mask"]
    )
    np.testing.assert_allclose(np.asarray(logps), b["old_logps"], atol=1e-5)
    assert np.all(np.asarray(entropy)[b["loss_mask"] == 1] > 0)
    assert np.all(b["old_logps"][b["loss_mask"] == 0] == 0)


def _ppo_batch(setup, advantages):
    b = dict(setup["batch"])
    rng = np.random.default_rng(0)
    b["advantages"] = advantages
    b["returns"] = (rng.normal(size=b["old_logps"].shape) * b["loss_mask"]).astype(np.float32)
    b["old_values"] = np.zeros_like(b["old_logps"])
    return b


def _ppo_step(setup, loss_kwargs, opt_kw=None):
    mesh = setup["mesh"]
    params = {
        "policy": jax.tree.map(jnp.copy, setup["params"]),
        "value_head": pg.init_value_head(_tiny_model(setup["tok"]).d_model),
    }
    rep = sharding.replicated(mesh)
    shardings = {"policy": setup["shardings"], "value_head": {"w": rep, "b": rep}}
    tx = optim.make_optimizer(_optim(**(opt_kw or {})), params, 10)
    state, st_sh = T.create_train_state(params, shardings, tx, mesh, seed=0, with_reference=False)
    loss_fn = pg.make_pg_loss(
        setup["graphdef"],
        loss=losses.get("ppo"),
        loss_kwargs=loss_kwargs,
        with_values=True,
        chunk_size=8,
    )
    return state, st_sh, tx, loss_fn


def test_ppo_step_with_zero_advantages_and_zero_kl_leaves_the_policy_unchanged(setup):
    batch = _ppo_batch(setup, np.zeros_like(setup["batch"]["old_logps"]))
    state, st_sh, tx, loss_fn = _ppo_step(setup, dict(beta=0.0, vf_coef=0.5))
    before = jax.device_get(state.params)
    b_sh = T.batch_shardings_for(batch, setup["mesh"])
    step = T.make_train_step(
        loss_fn, tx, state_shardings=st_sh, batch_shardings=b_sh, mesh=setup["mesh"]
    )
    state, m = step(state, T.to_global(batch, b_sh))
    after = jax.device_get(state.params)
    for x, y in zip(jax.tree.leaves(before["policy"]), jax.tree.leaves(after["policy"])):
        np.testing.assert_array_equal(x, y)
    # the step did run: the critic moved towards the returns
    assert float(m["value_loss"]) > 0
    assert not np.allclose(before["value_head"]["w"], after["value_head"]["w"])
    # and a nonzero advantage does move the policy (the test above can fail)
    batch = _ppo_batch(
        setup, np.where(setup["batch"]["loss_mask"] == 1, 1.0, 0.0).astype(np.float32)
    )
    state, st_sh, tx, loss_fn = _ppo_step(setup, dict(beta=0.0, vf_coef=0.5))
    state, _ = step(state, T.to_global(batch, b_sh))
    moved = jax.device_get(state.params)["policy"]
    # ... in the right direction: positive advantages raise the sampled tokens' log-probs
    forward = rollout.make_forward(setup["graphdef"], 8)
    b = setup["batch"]
    new_logps = np.asarray(forward(moved, b["input_ids"], b["attention_mask"], b["loss_mask"]))
    m = b["loss_mask"] == 1
    assert new_logps[m].mean() > b["old_logps"][m].mean() + 1e-3


def test_clip_fraction_and_kl_metrics_on_hand_made_ratios(setup):
    b = dict(setup["batch"])
    mask = b["loss_mask"]
    # old log-probs lowered by log 2 on every other response token: ratio 2 > 1 + eps there
    tokens = np.cumsum(mask, axis=1) * mask
    shifted = (tokens % 2 == 1) & (mask == 1)
    b["old_logps"] = np.where(shifted, b["old_logps"] - np.log(2.0), b["old_logps"]).astype(
        np.float32
    )
    b["advantages"] = np.ones((8,), np.float32)
    b["ref_logps"] = np.where(mask == 1, setup["batch"]["old_logps"] - 0.5, 0.0).astype(np.float32)
    loss_fn = pg.make_pg_loss(
        setup["graphdef"],
        loss=losses.get("grpo"),
        loss_kwargs=dict(beta=0.1, kl_estimator="k1", aggregation="bnpo"),
        with_values=False,
        chunk_size=8,
    )
    _, _, m = jax.jit(loss_fn)(setup["params"], None, b)
    assert float(m["clip_fraction"]) == pytest.approx(shifted.sum() / mask.sum(), abs=1e-6)
    assert float(m["kl_in_loss"]) == pytest.approx(
        0.5, abs=1e-5
    )  # k1 = logp - ref = 0.5 on every token
    # the loop's sequence KL: sum over response tokens of old - ref
    seq = rollout.sequence_sums(setup["batch"]["old_logps"], mask) - rollout.sequence_sums(
        b["ref_logps"], mask
    )
    np.testing.assert_allclose(seq, 0.5 * mask.sum(1), rtol=1e-5)


def test_ppo_advantages_gae_closed_form():
    # one row, 3 response tokens, V = 0, gamma = lam = 1, no KL: A_t = R (terminal reward) everywhere
    mask = np.array([[0, 1, 1, 1]], np.int32)
    zeros = np.zeros((1, 4), np.float32)
    adv, ret = pg.ppo_advantages(
        terminal_rewards=np.array([2.0], np.float32),
        old_logps=zeros,
        ref_logps=zeros,
        values=zeros,
        mask=mask,
        kl_coef=0.1,
        gamma=1.0,
        lam=1.0,
        whiten=False,
    )
    np.testing.assert_allclose(np.asarray(adv), [[0, 2, 2, 2]])
    # a KL of 1 per token under kl_coef 0.5 costs 0.5 per remaining token
    old = np.array([[0, -1, -1, -1]], np.float32)
    ref = np.array([[0, -2, -2, -2]], np.float32)
    adv, _ = pg.ppo_advantages(
        terminal_rewards=np.array([2.0], np.float32),
        old_logps=old,
        ref_logps=ref,
        values=zeros,
        mask=mask,
        kl_coef=0.5,
        gamma=1.0,
        lam=1.0,
        whiten=False,
    )
    np.testing.assert_allclose(np.asarray(adv), [[0, 0.5, 1.0, 1.5]])


def test_pair_slots_never_pair_a_tie_and_count_it():
    scores = np.array([0.1, 0.9, 0.5, 2.0, 2.0, 2.0, 1.0, 0.0, 1.0])
    chosen, rejected, weight, stats = online_pairs.pair_slots(
        scores, 3, strategy="best_vs_worst", pairs_per_group=1, seed=0
    )
    assert chosen.tolist() == [1, 3, chosen[2]] and rejected.tolist() == [0, 3, 7]
    assert chosen[2] in (6, 8)  # tied maxima: either one
    assert weight.tolist() == [1.0, 0.0, 1.0]  # the all-tie group gets a zero-weight slot
    assert stats["groups_without_pair"] == 1 and stats["pairs"] == 2
    # several slots per group: all_pairs of 3 distinct scores fills 2 of 2 slots, a tie group none
    chosen, rejected, weight, stats = online_pairs.pair_slots(
        np.array([0.0, 1.0, 2.0, 5.0, 5.0, 5.0]), 3, strategy="all_pairs", pairs_per_group=2, seed=0
    )
    assert weight.tolist() == [1.0, 1.0, 0.0, 0.0] and stats["pair_ties"] == 3
    assert all(
        scores_c > scores_r
        for scores_c, scores_r in zip(
            np.array([0.0, 1.0, 2.0])[chosen[:2]], np.array([0.0, 1.0, 2.0])[rejected[:2]]
        )
    )


def _pair_batch(setup, weight):
    b = setup["batch"]
    ref = (
        rollout.sequence_sums(b["old_logps"], b["loss_mask"]) - 0.3
    )  # pi != ref: nonzero DPO gradient too
    return online_pairs.preference_batch(
        b, ref, np.arange(0, 8, 2), np.arange(1, 8, 2), np.asarray(weight, np.float32)
    )


def test_zero_weight_pair_slots_give_exactly_no_gradient_even_with_sails_score_term(setup):
    logprob_fn = T.make_logprob_fn(setup["graphdef"], 8)
    kw = dict(beta=0.1, score_coef=0.3, self_label_coef=0.2)

    def grads(batch):
        f = lambda p: online_pairs.weighted_pair_loss(
            logprob_fn,
            p,
            batch,
            loss_fn=losses.get("sail"),  # noqa: E731
            loss_kwargs=kw,
        )[0]
        return jax.tree.leaves(jax.jit(jax.grad(f))(setup["params"]))

    full = _pair_batch(setup, [1, 0, 1, 0])
    kept = {
        k: v[[0, 2]] for k, v in full.items()
    }  # the same two pairs without the zero-weight slots
    for a, b in zip(grads(full), grads(kept)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    none = grads(_pair_batch(setup, [0, 0, 0, 0]))
    assert all(np.all(np.asarray(g) == 0) for g in none)
    assert any(np.any(np.asarray(g) != 0) for g in grads(_pair_batch(setup, [0, 0, 0, 1])))
    # metrics are means over the weighted pairs only
    _, n, m = online_pairs.weighted_pair_loss(
        logprob_fn, setup["params"], full, loss_fn=losses.get("sail"), loss_kwargs=kw
    )
    assert float(n) == 2.0
    seq = rollout.sequence_sums(setup["batch"]["old_logps"], setup["batch"]["loss_mask"])
    assert float(m["logps_chosen"]) == pytest.approx(seq[[0, 4]].mean(), abs=1e-4)


def test_dataset_pairs_encode_in_the_rollout_layout_and_sail_dp_relabels_by_the_implicit_reward(
    setup,
):
    tok = setup["tok"]
    task = tasks.get_task("sorting", length=(3, 4), value_range=(0, 9))
    rows, skipped = online_pairs.dataset_pairs(task, 6, seed=0)
    assert len(rows) + skipped == 6 and len(rows) >= 4
    for prompt, chosen, rejected in rows:
        assert task.gold_reward(prompt, chosen) > task.gold_reward(prompt, rejected)
    ds = online_pairs.encode_dataset_pairs(
        tok, rows, chat_template=False, max_prompt_len=16, max_new_tokens=12, pad=tok.pad_id
    )
    texts, _, ended = rollout.decode_responses(
        tok, ds["chosen_input_ids"][:, 16:], ds["chosen_attention_mask"][:, 16:].sum(1)
    )
    assert texts == [r[1] for r in rows] and ended.all()
    assert (ds["chosen_loss_mask"][:, :16] == 0).all()
    with pytest.raises(ValueError, match=r"dataset pair 0: the chosen response .*max_new_tokens=3"):
        online_pairs.encode_dataset_pairs(
            tok, rows, chat_template=False, max_prompt_len=16, max_new_tokens=3, pad=tok.pad_id
        )
    o = ml_collections.ConfigDict(
        {"offline_label": "implicit", "implicit_beta": 0.5, "implicit_labels": "argmax"}
    )
    n = len(rows)
    params = setup["params"]
    # pi == ref: every implicit reward is 0, every pair ties and gets weight 0
    out = online_pairs.dataset_step(
        ds,
        list(range(n)),
        o,
        forward=rollout.make_forward(setup["graphdef"], 8),
        params=params,
        ref_params=params,
        mesh=setup["mesh"],
    )
    assert out["pair_weight"].tolist() == [0.0] * n and out["metrics"]["offline_pair_ties"] == n
    # a policy whose log-probs beat the reference's on the dataset's rejected rows prefers them
    h_sign = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)  # +: chosen keeps, -: swapped

    def fake_forward(p, ids, attn, mask):
        logps = np.asarray(rollout.make_forward(setup["graphdef"], 8)(params, ids, attn, mask))
        if (
            p == "policy"
        ):  # chosen rows (first n) up by h, rejected rows down by h, spread on their first token
            bump = np.concatenate([h_sign, -h_sign])[:, None] * (
                np.cumsum(np.asarray(mask), 1) == 1
            )
            logps = logps + bump
        return logps

    out = online_pairs.dataset_step(
        ds,
        list(range(n)),
        o,
        forward=fake_forward,
        params="policy",
        ref_params=params,
        mesh=setup["mesh"],
    )
    assert out["pair_weight"].tolist() == [1.0] * n
    swapped = h_sign < 0
    np.testing.assert_array_equal(
        out["chosen_input_ids"][swapped], ds["rejected_input_ids"][swapped]
    )
    np.testing.assert_array_equal(
        out["chosen_input_ids"][~swapped], ds["chosen_input_ids"][~swapped]
    )
    assert out["metrics"]["offline_flipped_fraction"] == pytest.approx(swapped.mean())
    # "dataset" labels keep the gold order whatever the policy says
    o.offline_label = "dataset"
    out = online_pairs.dataset_step(
        ds,
        list(range(n)),
        o,
        forward=fake_forward,
        params="policy",
        ref_params=params,
        mesh=setup["mesh"],
    )
    np.testing.assert_array_equal(out["chosen_input_ids"], ds["chosen_input_ids"])


def test_group_size_not_dividing_the_batch_is_an_error():
    c = _config("grpo")
    c.unlock()
    c.online.num_minibatches = 3
    with pytest.raises(ValueError, match="num_minibatches=3"):
        online.validate_online(c)
    with pytest.raises(ValueError, match="groups of 3"):
        rollout.group_advantages(np.zeros(8, np.float32), kind="group", group_size=3)


def test_nan_or_wrong_shape_reward_names_the_reward_and_row(setup):
    class Task:
        name = "broken"
        has_verifier = False

        def gold_rewards(self, prompts, responses):
            return np.array([1.0, np.nan, 0.0], np.float32)[: len(prompts)]

    cfg = rewards.default_reward_config()
    fn, name = rollout.make_reward(cfg, task=Task(), tokenizer=setup["tok"], mesh=setup["mesh"])
    inputs = RewardInputs(["a", "b", "c"], ["x", "y", "z"], [[1], [2], [3]], [[1], [2], [3]])
    with pytest.raises(ValueError, match=r"'task:broken'.*row 1"):
        fn(inputs)
    inputs = RewardInputs(["a", "b", "c", "d"], ["x"] * 4, [[1]] * 4, [[1]] * 4)
    with pytest.raises(ValueError, match=r"'task:broken' returned shape \(3,\) for 4"):
        fn(inputs)


def test_prompt_longer_than_the_sampler_allows_is_named(setup):
    with pytest.raises(
        ValueError, match=r"max_prompt_len=8 is too short for prompt 1 .*'sort: 5 4 3 2 1'"
    ):
        rollout.encode_prompt_batch(
            setup["tok"], ["ab", "sort: 5 4 3 2 1"], chat_template=False, max_prompt_len=8
        )


def test_every_online_config_validates_and_rejects_wrong_pairings():
    for name, arg in [
        ("ppo", "tiny"),
        ("grpo", "tiny"),
        ("sr_ppo", "tiny"),
        ("online_dpo", "tiny"),
        ("sail", "tiny"),
        ("sail", "tiny,variant=pp"),
        ("ppo", None),
        ("grpo", "variant=gspo"),
    ]:
        online.validate_online(_config(name, arg))
    for variant in ("rloo", "dr_grpo", "dapo", "gspo"):
        online.validate_online(_config("grpo", f"tiny,variant={variant}"))
    online.validate_online(_config("sail", "tiny,variant=mix"))
    for bad, match in [
        ({"offline_fraction": 1.0}, "offline_fraction must lie in"),
        ({"pairing": "best"}, "online.pairing must be one of"),
        ({"pairing": "best_vs_worst", "pairs_per_group": 2}, "pairs_per_group must be 1"),
        ({"offline_label": "gold"}, "offline_label must be one of"),
    ]:
        c = _config("sail", "tiny")
        c.unlock()
        c.online.update(bad)
        with pytest.raises(ValueError, match=match):
            online.validate_online(c)
    c = _config("sr_ppo", "tiny")
    c.unlock()
    c.online.log_ratio_reward = "mean"
    with pytest.raises(ValueError, match="log_ratio_reward must be one of"):
        online.validate_online(c)
    c = _config("grpo")
    c.unlock()
    c.loss = "dpo"
    with pytest.raises(ValueError, match="needs a policy_gradient loss"):
        online.validate_online(c)
    c = _config("ppo")
    c.unlock()
    c.online.advantage = "group"
    with pytest.raises(ValueError, match="advantage 'gae'"):
        online.validate_online(c)


def test_implicit_labels_are_drawn_from_the_implicit_reward():
    """SAIL's self-labelling: P(keep the order) = sigmoid(h) for "sampled" (checked by frequency on
    20k draws per margin), the sign of h for "argmax"."""
    h = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    rng = np.random.default_rng(0)
    draws = np.stack(
        [online_pairs.implicit_swaps(h, labels="sampled", rng=rng) for _ in range(20000)]
    )
    np.testing.assert_allclose(draws.mean(0), 1.0 / (1.0 + np.exp(h)), atol=0.015)
    assert online_pairs.implicit_swaps(h, labels="argmax", rng=rng).tolist() == [
        True,
        True,
        False,
        False,
        False,
    ]


def test_implicit_labels_setting_is_validated():
    c = _config("sail", "tiny,variant=pp")
    with c.unlocked():
        c.online.implicit_labels = "softmax"
    with pytest.raises(ValueError, match="online.implicit_labels"):
        online.validate_online(c)
