"""Each online config's `tiny` arg runs end to end through `alignment.learners.run` (2 steps on the
8 fake devices) and writes `reward_mean` and `kl` to metrics.jsonl, compiling its sampler once;
an interrupted run resumes to the same parameters as an uninterrupted one; the sampler reads the
learner's parameter buffers, not a copy."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from alignment import engine, learners, models, sharding
from alignment.engine import config as config_files
from alignment.learners import online, pg, rollout
from alignment.models.logprobs import model_logprobs

REPO = pathlib.Path(__file__).resolve().parents[1]
CONTRACT_KEYS = (
    "reward_mean",
    "kl",
    "entropy",
    "response_length",
    "gen_tokens_per_s",
    "train_tokens_per_s",
)


def _config(name, arg, **online):
    overrides = {
        "num_train_steps": 2,
        "checkpoint_every_steps": 1,
        "checkpoint_async": False,
        "progress_bar": False,
        "tensorboard": False,
        "online.max_new_tokens": 8,
        "online.ppo_epochs": 1,
        **{f"online.{k}": v for k, v in online.items()},
    }
    return config_files.get_config(REPO / "configs" / f"{name}.py", arg, overrides)


def _lines(workdir):
    with open(pathlib.Path(workdir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


_RUNS = {}


# SAIL's mix on 8 devices: 4 dataset pairs (8 responses) + 4 sampled prompts per step
_OVERRIDES = {
    ("sail", "tiny,variant=mix"): {
        "offline_fraction": 0.5,
        "pairing": "best_vs_worst",
        "pairs_per_group": 1,
    },
    ("sr_ppo", "tiny"): {"log_ratio_reward": "token_mean"},
}


def _run(name, arg, root):
    """One 2-step run per (config, arg) per session; the resume test reuses the GRPO one.
    Returns (workdir, final state, how many times the rollout sampler was traced)."""
    if (name, arg) not in _RUNS:
        workdir = pathlib.Path(root) / f"{name}_{arg}".replace(",", "_").replace("=", "-")
        before = rollout.TRACE_COUNT[0]
        state = learners.run(_config(name, arg, **_OVERRIDES.get((name, arg), {})), str(workdir))
        _RUNS[name, arg] = workdir, state, rollout.TRACE_COUNT[0] - before
    return _RUNS[name, arg]


@pytest.mark.parametrize(
    "name,arg",
    [
        ("grpo", "tiny,variant=rloo"),
        ("ppo", "tiny"),
        ("sr_ppo", "tiny"),
        ("online_dpo", "tiny"),
        ("sail", "tiny,variant=mix"),
    ],
)
def test_tiny_config_runs_end_to_end(name, arg, tmp_path_factory):
    workdir, state, traces = _run(name, arg, tmp_path_factory.getbasetemp())
    lines = _lines(workdir)
    assert [r["step"] for r in lines] == [1, 2]
    # the sampler is traced at most once per run (batch and prompt length stay fixed across steps; a
    # retrace per step would count 2), and not at all when an earlier run compiled the same shape
    assert traces <= 1
    for r in lines:
        for key in CONTRACT_KEYS:
            assert key in r and np.isfinite(r[key]), (name, key, r)
        assert 0.0 <= r["reward_mean"] <= 1.0  # sorting's gold reward lies in [0, 1]
    ppo_like = name in ("ppo", "sr_ppo")
    assert ("value_loss" in lines[0]) == ppo_like
    assert ("clip_fraction" in lines[0]) == (name not in ("online_dpo", "sail"))
    if name in ("online_dpo", "sail"):  # every pair slot is a pair or a counted group without one
        c = _config(name, arg, **_OVERRIDES.get((name, arg), {}))
        n_on = c.online.num_prompts - (4 if name == "sail" else 0)
        for r in lines:
            assert (
                r["pairs_per_step"] <= n_on * c.online.pairs_per_group
                and r["groups_without_pair"] <= n_on
            ), r
            assert (
                r["pair_ties"] > 0 or r["groups_without_pair"] == 0
            )  # only ties leave a group unpaired
        if name == "sail":  # step 1: pi == ref, every dataset pair ties under the implicit reward
            assert lines[0]["offline_pair_ties"] == 4 and lines[0]["offline_pairs"] == 0
    # one optimizer update per minibatch per epoch
    c = _config(name, arg)
    assert int(state.step) == 2 * c.online.num_minibatches
    assert json.loads((workdir / "run.json").read_text())["kind"] == "online"


def test_resume_after_interruption_continues_exactly(tmp_path, tmp_path_factory):
    full, state_full, _ = _run("grpo", "tiny,variant=rloo", tmp_path_factory.getbasetemp())
    # a run killed after step 1: its step-2 checkpoint never got written
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "2")
    state_resumed = learners.run(_config("grpo", "tiny,variant=rloo"), str(cut))
    for a, b in zip(
        jax.tree.leaves(jax.device_get(state_full.params)),
        jax.tree.leaves(jax.device_get(state_resumed.params)),
    ):
        np.testing.assert_allclose(a, b, atol=1e-6)
    full_lines, cut_lines = _lines(full), _lines(cut)
    assert [r["step"] for r in cut_lines] == [1, 2]
    for key in ("reward_mean", "kl", "loss"):
        assert cut_lines[1][key] == pytest.approx(full_lines[1][key], abs=1e-5)


def test_sampler_reads_the_learners_parameter_buffers_without_a_copy(tmp_path, monkeypatch):
    """Each step samples from the very buffers the step's first update then receives (and donates):
    the policy is not copied for generation."""
    seen = {"sampled": [], "trained": []}

    def buffers(tree):
        return [
            s.data.unsafe_buffer_pointer()
            for leaf in jax.tree.leaves(tree)
            for s in leaf.addressable_shards
        ]

    def spy(make, key, of):
        def wrapped_make(*a, **k):
            fn = make(*a, **k)

            def call(first, *rest):
                seen[key].append(buffers(of(first)))
                return fn(first, *rest)

            return call

        return wrapped_make

    monkeypatch.setattr(rollout, "make_sampler", spy(rollout.make_sampler, "sampled", lambda p: p))
    monkeypatch.setattr(
        engine, "make_train_step", spy(engine.make_train_step, "trained", lambda s: s.params)
    )
    c = _config("grpo", "tiny")
    learners.run(c, str(tmp_path))
    per_step = c.online.num_minibatches  # updates per step (ppo_epochs=1)
    assert len(seen["sampled"]) == 2 and len(seen["trained"]) == 2 * per_step
    # a copy made for sampling would live at other addresses while the state's buffers are alive
    for step in range(2):
        assert seen["sampled"][step] == seen["trained"][step * per_step], step


def test_sr_ppo_reward_in_the_loop_equals_a_fresh_log_ratio(tmp_path, monkeypatch):
    """The reward Self-Rewarding PPO's advantages receive is sum_t log pi_sft(y_t) - log pi_base(y_t)
    over each sample's response tokens, recomputed here from freshly built pi_sft (the run's
    starting weights, seed s) and pi_base (the random base, seed s + 1) on the sampled rows."""
    seen = {"rollouts": [], "rewards": []}
    real_rollout, real_advantages = online.OnlineRun.rollout, pg.ppo_advantages

    def rollout_spy(self, *args, **kwargs):
        seen["rollouts"].append(real_rollout(self, *args, **kwargs))
        return seen["rollouts"][-1]

    def advantages_spy(**kwargs):
        seen["rewards"].append(np.asarray(kwargs["terminal_rewards"]))
        return real_advantages(**kwargs)

    monkeypatch.setattr(online.OnlineRun, "rollout", rollout_spy)
    monkeypatch.setattr(pg, "ppo_advantages", advantages_spy)
    c = _config("sr_ppo", "tiny", log_ratio_reward="sum")
    learners.run(c, str(tmp_path))
    assert len(seen["rewards"]) == c.num_train_steps == len(seen["rollouts"])

    mesh = sharding.make_mesh(c.mesh.to_dict())
    model_cfg = engine.model_config(c, engine.make_tokenizer(c.tokenizer).vocab_size)
    graphdef, sft, _ = engine.init_params(model_cfg, mesh, c.seed)
    _, base, _ = engine.init_params(model_cfg, mesh, c.seed + 1)
    batch = seen["rollouts"][0].batch  # step 1: pi_sft is both the policy's start and the reference

    def sequence_logps(params):
        logps = model_logprobs(
            models.merge(graphdef, params),
            batch["input_ids"],
            batch["attention_mask"],
            batch["loss_mask"],
            chunk_size=c.model.logprob_chunk_size,
        )
        return np.sum(np.asarray(logps, np.float64) * batch["loss_mask"], axis=-1)

    expected = sequence_logps(sft) - sequence_logps(base)
    assert np.all(batch["loss_mask"].sum(-1) > 0)
    assert np.abs(expected).max() > 1e-3, "pi_sft and pi_base agree: the check would be vacuous"
    np.testing.assert_allclose(seen["rewards"][0], expected, rtol=1e-4, atol=1e-4)


def test_sr_ppo_without_a_base_is_refused_outside_tiny():
    """A full-size SR-PPO config must name pi_base; only the tiny arg may fall back to a random one."""
    with pytest.raises(ValueError, match=r"reward\.base_path"):
        learners.validate(config_files.get_config(REPO / "configs" / "sr_ppo.py", None))
    learners.validate(config_files.get_config(REPO / "configs" / "sr_ppo.py", "tiny"))
    full = config_files.get_config(
        REPO / "configs" / "sr_ppo.py", None, {"reward.base_path": "/a/base"}
    )
    learners.validate(full)


def test_sail_pp_runs_end_to_end_and_ties_from_the_reference(tmp_path_factory):
    """SAIL-PP alone (labels from the policy's own implicit reward, drawn as its gradient
    assumes) runs; from pi == ref every implicit reward is 0, so every group ties and no pair
    trains (the reward-labelled share of the mixed variants is what moves the policy first)."""
    workdir, _, _ = _run("sail", "tiny,variant=pp", tmp_path_factory.getbasetemp())
    lines = _lines(workdir)
    assert [r["step"] for r in lines] == [1, 2]
    c = _config("sail", "tiny,variant=pp")
    assert c.online.label == "implicit" and c.online.implicit_labels == "sampled"
    for r in lines:
        for key in CONTRACT_KEYS:
            assert key in r and np.isfinite(r[key]), (key, r)
        assert r["pairs_per_step"] == 0 and r["groups_without_pair"] == c.online.num_prompts
