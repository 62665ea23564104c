"""The online-gains check (`experiments.reproduce.online_gains`): its decision rule, and its --quick
run end to end through the learners' own configs on sentiment; the SR-PPO reproduction, which
shares its setting, in the same workdir."""

import json
import math
import os

from alignment.engine.config import get_config
from experiments.reproduce import common, online_gains, sr_ppo
from experiments.reproduce.sail import REPO as shared_repo


def _rows(sft, **methods):
    seeds = list(range(len(sft)))
    rows = [common.row("sft", seeds, gold_reward=sft)]
    rows += [common.row(m, seeds, gold_reward=v) for m, v in methods.items()]
    return {r["method"]: r for r in rows}


def test_a_learner_counts_as_raising_gold_only_above_sft_on_every_seed_and_beyond_the_spread():
    by = _rows(
        [0.05, 0.07, 0.06],
        clear=[0.40, 0.45, 0.50],
        one_seed_below=[0.60, 0.60, 0.06],
        within_spread=[0.06, 0.075, 0.065],
        noisy=[0.10, 0.90, 0.11],
    )
    assert online_gains.improves(by, "clear")
    assert not online_gains.improves(by, "one_seed_below")  # mean 0.42 is far above, seed 2 ties
    assert not online_gains.improves(
        by, "within_spread"
    )  # above on every seed, by less than the std
    assert not online_gains.improves(
        by, "noisy"
    )  # above on every seed, mean 0.37 < 0.06 + std 0.46


def test_every_learner_has_a_config_and_the_pairwise_ones_train_on_all_pairs():
    s = online_gains.settings_for(False)
    assert s["methods"] + ["sr_ppo_token_mean"] == list(online_gains.METHODS)
    assert {"ppo", "grpo", "rloo", "sr_ppo", "online_dpo", "sail"} <= set(s["methods"])
    o = online_gains.overrides("sr_ppo", sft_hf="/sft", base="/base", s=s)
    assert (
        o["reward.base_path"] == "/base" and o["tokenizer"] == "/sft"
    )  # pi_base is the pretrained base
    t = online_gains.overrides("sr_ppo_token_mean", sft_hf="/sft", base="/base", s=s)
    assert t["reward.base_path"] == "/base" and t["online.log_ratio_reward"] == "token_mean"
    assert o["online.log_ratio_reward"] == "sum" and "sr_ppo_token_mean" not in s["methods"]
    assert sr_ppo.settings_for(False)["methods"] == ["sr_ppo", "sr_ppo_token_mean"]
    assert (
        online_gains.overrides("sail", sft_hf="/sft", base="/base", s=s)["online.pairs_per_group"]
        == s["group"]
    )
    assert "reward.base_path" not in online_gains.overrides("ppo", sft_hf="/sft", base="/base", s=s)


def test_every_method_builds_its_config_with_the_checks_overrides():
    s = online_gains.settings_for(False)
    for m, (name, arg, _) in online_gains.METHODS.items():
        c = get_config(
            os.path.join(shared_repo, "configs", f"{name}.py"),
            arg,
            online_gains.overrides(m, sft_hf="/sft", base="/base", s=s),
        )
        assert c.task == "sentiment" and c.online.task == "sentiment" and c.tokenizer == "/sft", m
        assert c.reward.kind == ("log_ratio" if name == "sr_ppo" else "task"), m
        assert c.online.max_prompt_len == s["max_prompt_len"], m


def test_quick_run_writes_results_with_per_seed_gold_and_reuses_its_stages(tmp_path):
    argv = [
        "--quick",
        "--seeds",
        "1",
        "--out",
        str(tmp_path / "out"),
        "--workdir",
        str(tmp_path / "runs"),
    ]
    first = online_gains.main(argv)
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (
        res["name"] == "online_gains"
        and res["quick"] is True
        and isinstance(res["supported"], bool)
    )
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == ["sft"] + online_gains.settings_for(True)["methods"]
    for name, r in rows.items():
        assert r["seeds"] == [0]
        g = r["gold_reward"]["values"]
        assert len(g) == 1 and math.isfinite(g[0]) and -1.0 <= g[0] <= 1.0, (
            name,
            g,
        )  # VADER compound
        if name != "sft":
            assert 0.0 <= r["win_rate_vs_sft"]["values"][0] <= 1.0
            assert math.isfinite(r["kl_vs_sft"]["values"][0])
    # every learner ran through experiments.train's path and logged the contract metrics
    for m in online_gains.settings_for(True)["methods"]:
        (run,) = list((tmp_path / "runs").glob(f"{m}_*_s0"))
        line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        assert {"reward_mean", "kl"} <= set(line), (m, sorted(line))
    again = online_gains.main(argv)  # every stage and evaluation reused: identical numbers
    assert again["rows"] == first["rows"]

    # SR-PPO: pi_base is the shipped pretrained base, pi_sft the SFT stage above (not retrained)
    sr = sr_ppo.main(
        [
            "--quick",
            "--seeds",
            "1",
            "--out",
            str(tmp_path / "sr"),
            "--workdir",
            str(tmp_path / "runs"),
        ]
    )
    assert [r["method"] for r in sr["rows"]] == ["sft", "sr_ppo"] and isinstance(
        sr["supported"], bool
    )
    assert sr["settings"]["base"] == res["settings"]["base"] != sr["settings"]["sft_policy"]
    assert sorted(p.name for p in (tmp_path / "runs").glob("sft*")) == ["sft"]
    # the same SFT policy, prompts and sampling seed, and the same run (reused): the same numbers
    assert sr["rows"] == first["rows"]  # quick online_gains runs sr_ppo only
