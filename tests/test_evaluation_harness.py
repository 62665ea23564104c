"""evaluate_policy on hand-built tiny models whose answers are known in closed form."""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignment import evaluation, models, sharding, tasks
from alignment.tasks.base import Task
from alignment.tokenizer import tiny_tokenizer

TOK = tiny_tokenizer()
CFG = models.get_preset("tiny", n_layers=1, max_seq_len=64)
ONE = TOK.encode("1")[0]


@dataclasses.dataclass(frozen=True)
class OnesTask(Task):
    """Reward = fraction of the response's characters that are '1'; solved = all four are '1'."""

    name: ClassVar[str] = "ones"
    has_verifier: ClassVar[bool] = True

    def prompts(self, split, n, seed):
        return [f"q{seed}-{i}:" for i in range(n)]

    def demonstrations(self, split, n, seed):
        return [(p, "1111") for p in self.prompts(split, n, seed)]

    def gold_reward(self, prompt, response):
        return response.count("1") / len(response) if response else 0.0

    def verify(self, prompt, response):
        return response == "1111"


def random_model(seed=0):
    return models.Transformer(CFG, rngs=nnx.Rngs(seed))


def constant_model(logit_on_one: float):
    """A model whose next-token logits are the same at every position: 0 for every token except
    `logit_on_one` for the token '1' (0 everywhere = uniform). Every token embeds to e_0 and the
    layer outputs are zeroed, so the final hidden state is the constant sqrt(D) e_0 (RMSNorm of
    e_0), and the lm_head row 0 sets the logits."""
    model = random_model()
    graphdef, state = models.split(model)
    flat = dict(nnx.to_flat_state(state))
    d = CFG.d_model
    embed = np.zeros((CFG.vocab_size, d), np.float32)
    embed[:, 0] = 1.0
    flat[("embed",)].set_value(jnp.asarray(embed))
    for path, var in flat.items():
        if path[-1] in ("o", "down"):
            var.set_value(jnp.zeros_like(var.get_value()))
    flat[("final_norm", "scale")].set_value(jnp.ones((d,), jnp.float32))
    head = np.zeros((d, CFG.vocab_size), np.float32)
    head[0, ONE] = logit_on_one / np.sqrt(d)
    flat[("lm_head",)].set_value(jnp.asarray(head))
    return models.merge(graphdef, state)


def model_probs(model):
    """The model's next-token distribution (the same at every position by construction)."""
    logits = np.asarray(model(jnp.asarray([[ONE, 5, 7]])), np.float64)
    assert np.allclose(logits[0, 0], logits[0, 2], atol=1e-5)
    z = logits[0, -1]
    return np.exp(z - z.max()) / np.exp(z - z.max()).sum()


KW = dict(num_prompts=4, samples_per_prompt=4, max_new_tokens=4, seed=0, batch_size=16)


def test_policy_equal_to_reference_has_zero_kl_and_half_win_rate():
    model = random_model(1)
    r = evaluation.evaluate_policy(
        model, model, TOK, tasks.get_task("sorting"), temperature=1.0, **KW
    )
    assert r["kl"] == 0.0 and r["kl_stderr"] == 0.0
    assert r["win_rate"] == 0.5
    assert r["gold_reward"] == r["reference_gold_reward"]
    assert r["ranking_accuracy"] in (None, 0.5)
    assert r["pass_at_k"] == r["reference_pass_at_k"] and set(r["pass_at_k"]) == {"1", "2", "4"}
    assert len(r["examples"]) == 4 and r["examples"][0]["policy"] == r["examples"][0]["reference"]


def test_forced_token_policy_known_reward_kl_and_pass_at_k():
    policy, reference = (
        constant_model(60.0),
        constant_model(0.0),
    )  # '1' with prob 1 - 1e-24 vs uniform
    r = evaluation.evaluate_policy(policy, reference, TOK, OnesTask(), temperature=1.0, **KW)
    assert r["gold_reward"] == 1.0 and r["gold_reward_stderr"] == 0.0
    assert r["pass_at_k"] == {"1": 1.0, "2": 1.0, "4": 1.0}
    assert r["win_rate"] == 1.0  # a uniform reference writes '1111' with probability 256**-4
    assert r["truncated_fraction"] == 1.0 and r["response_length"] == 4.0
    # Every KL sample is '1111': log pi = 4 log(1 - 255 e^-60) ~ 0, log ref = -4 log 256 exactly.
    assert r["kl"] == pytest.approx(4 * np.log(CFG.vocab_size), abs=1e-4)
    assert all(ex["policy"] == "1111" for ex in r["examples"])
    # greedy evaluation draws separate temperature-1 samples for the KL: same answer here
    g = evaluation.evaluate_policy(policy, reference, TOK, OnesTask(), temperature=0.0, **KW)
    assert g["kl_samples"].endswith("separate temperature-1 samples")
    assert g["kl"] == pytest.approx(r["kl"], abs=1e-4) and g["gold_reward"] == 1.0


def test_kl_estimate_matches_closed_form_with_eos_stopping():
    # i.i.d. tokens from p (policy) vs uniform q (reference), stopping at EOS or after N tokens:
    # KL(pi || ref) over sequences = KL(p || q) * E[#tokens] = KL(p||q) * sum_{t<N} (1 - p_eos)^t.
    policy, reference = constant_model(4.0), constant_model(0.0)
    p = model_probs(policy)
    q = np.full_like(p, 1.0 / p.size)
    assert np.allclose(model_probs(reference), q, atol=1e-7)
    n_tokens = 4
    expected = np.sum(p * np.log(p / q)) * sum((1 - p[TOK.eos_id]) ** t for t in range(n_tokens))
    r = evaluation.evaluate_policy(
        policy,
        reference,
        TOK,
        OnesTask(),
        temperature=1.0,
        num_prompts=16,
        samples_per_prompt=16,
        max_new_tokens=n_tokens,
        seed=3,
        batch_size=256,
        num_examples=0,
    )
    assert r["kl_samples"].startswith("256 ")
    assert abs(r["kl"] - expected) < 4 * r["kl_stderr"] + 1e-3, (r["kl"], r["kl_stderr"], expected)
    # p('1') is 0.18 for the policy and 1/256 for the reference: more '1's, more wins than losses
    assert r["gold_reward"] > r["reference_gold_reward"] and r["win_rate"] > 0.6


def test_ranking_accuracy_on_given_pairs():
    policy, reference = constant_model(4.0), constant_model(0.0)
    pairs = [("q:", "11", "22"), ("q:", "1", "3"), ("q:", "5", "11")]
    r = evaluation.evaluate_policy(
        policy, reference, TOK, OnesTask(), temperature=1.0, pairs=pairs, **KW
    )
    # log pi - log ref is higher for every extra '1' and lower for every other token: pairs 0 and 1
    # are ranked right, pair 2 ("5" over "11") wrong.
    assert r["ranking_pairs"] == 3 and r["ranking_accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="pair 0 must be"):
        evaluation.evaluate_policy(
            policy, reference, TOK, OnesTask(), temperature=1.0, pairs=[("q", "1")], **KW
        )


def test_bad_input_is_a_clear_error():
    model = random_model()
    with pytest.raises(ValueError, match="num_prompts must be an int >= 1"):
        evaluation.evaluate_policy(
            model, model, TOK, OnesTask(), temperature=1.0, **{**KW, "num_prompts": 0}
        )

    class NoPrompts(OnesTask):
        def prompts(self, split, n, seed):
            return []

    with pytest.raises(ValueError, match="gave no prompts"):
        evaluation.evaluate_policy(model, model, TOK, NoPrompts(), temperature=1.0, **KW)
    with pytest.raises(ValueError, match="temperature"):
        evaluation.evaluate_policy(model, model, TOK, OnesTask(), temperature=float("nan"), **KW)
    other = models.Transformer(CFG.replace(vocab_size=300), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="vocab_size"):
        evaluation.evaluate_policy(model, other, TOK, OnesTask(), temperature=1.0, **KW)


def test_ranking_accuracy_on_pairs_of_reference_samples():
    # The reference writes '1' with prob 0.37, so its samples to a prompt differ in gold reward.
    # A policy equal to it ties on every pair (0.5 exactly); a policy that raises p('1') to 0.61
    # has log pi - log ref growing with every '1', so it mostly ranks the gold-better sample first.
    reference = constant_model(5.0)
    kw = {**KW, "samples_per_prompt": 4, "max_new_tokens": 6}
    same = evaluation.evaluate_policy(reference, reference, TOK, OnesTask(), temperature=1.0, **kw)
    assert same["ranking_pairs"] > 4 and same["ranking_accuracy"] == 0.5
    better = evaluation.evaluate_policy(
        constant_model(6.0), reference, TOK, OnesTask(), temperature=1.0, **kw
    )
    assert better["ranking_pairs"] == same["ranking_pairs"]  # the same reference samples
    assert better["ranking_accuracy"] > 0.75
    assert better["gold_reward"] > better["reference_gold_reward"]


def test_sharded_models_give_the_same_evaluation(tmp_path):
    path = str(tmp_path / "m")
    models.save_pretrained(random_model(5), path)
    ref_path = str(tmp_path / "r")
    models.save_pretrained(random_model(6), ref_path)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, devices=jax.devices()[:4])
    task = tasks.get_task("sorting")
    plain = evaluation.evaluate_policy(
        models.from_pretrained(path),
        models.from_pretrained(ref_path),
        TOK,
        task,
        temperature=1.0,
        **KW,
    )
    sharded = evaluation.evaluate_policy(
        models.from_pretrained(path, mesh=mesh),
        models.from_pretrained(ref_path, mesh=mesh),
        TOK,
        task,
        temperature=1.0,
        **KW,
    )
    assert sharded["examples"] == plain["examples"]
    assert (
        sharded["win_rate"] == plain["win_rate"] and sharded["gold_reward"] == plain["gold_reward"]
    )
    assert sharded["kl"] == pytest.approx(plain["kl"], abs=1e-4)
