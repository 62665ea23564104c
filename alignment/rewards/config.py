"""`default_reward_config()`: every key of the `config.reward` section, with its default."""

from __future__ import annotations

import ml_collections

from alignment import tasks

KINDS = ("task", "verifier", "reward_model", "log_ratio")


def default_reward_config() -> ml_collections.ConfigDict:
    """The reward section other configs embed as `config.reward` (see `alignment.rewards.make_reward`)."""
    c = ml_collections.ConfigDict()
    # task: the task's gold reward; verifier: 1.0 if the task's verifier accepts the response;
    # reward_model: the score of an exported reward-model folder at the last real token;
    # log_ratio: sum over response tokens of log p_path(y|x) - log p_base(y|x)
    c.kind = "task"
    c.task = ""  # an embedded task name (alignment.tasks.available()) for kind task / verifier
    c.path = (
        ""  # reward_model: a *ForSequenceClassification folder; log_ratio: the tuned policy folder
    )
    c.base_path = ""  # log_ratio: the base (reference) policy folder
    c.batch_size = 32  # rows per jitted forward of a model reward (the last batch is padded)
    c.length_bucket = 32  # model rewards pad sequences to a multiple of this (fewer recompiles)
    # model rewards score prompt + response + EOS, as the engine trains on (responses arrive EOS-stripped)
    c.append_eos = True
    c.dtype = "float32"  # compute/parameter dtype of reward models
    c.logprob_chunk_size = 256  # log_ratio: sequence chunk of the log-prob computation
    c.scale = 1.0  # r <- scale * r (e.g. beta of an implicit log-ratio reward)
    c.preference_temperature = 1.0  # make_preference: P(a > b) = sigmoid((r_a - r_b) / temperature)
    return c


def check_reward_config(c) -> None:
    """ValueError naming the key for a reward section that cannot work."""
    default = default_reward_config()
    unknown = sorted(set(c.keys()) - set(default.keys()))
    missing = sorted(set(default.keys()) - set(c.keys()))
    if unknown or missing:
        raise ValueError(f"reward config: unknown keys {unknown}, missing keys {missing}")
    if c.kind not in KINDS:
        raise ValueError(f"reward.kind={c.kind!r} is not one of {KINDS}")
    if c.kind in ("task", "verifier"):
        if c.task not in tasks.available():
            raise ValueError(
                f"reward.kind={c.kind!r} needs reward.task, one of {tasks.available()}; got {c.task!r}"
            )
    if c.kind in ("reward_model", "log_ratio") and not c.path:
        raise ValueError(f"reward.kind={c.kind!r} needs reward.path (a Hugging Face folder)")
    if c.kind == "log_ratio" and not c.base_path:
        raise ValueError("reward.kind='log_ratio' needs reward.base_path (the base policy folder)")
    for key in ("batch_size", "length_bucket", "logprob_chunk_size"):
        if not isinstance(c[key], int) or c[key] <= 0:
            raise ValueError(f"reward.{key} must be a positive int, got {c[key]!r}")
    if not c.preference_temperature > 0:
        raise ValueError(
            f"reward.preference_temperature must be > 0, got {c.preference_temperature}"
        )
