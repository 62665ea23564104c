"""Evaluation of a policy against its reference on a task's held-out prompts.

    from alignment import evaluation
    result = evaluation.evaluate_policy(policy, reference, tokenizer, task, num_prompts=64,
                                        samples_per_prompt=4, max_new_tokens=64, temperature=1.0, seed=0)
    result["gold_reward"], result["win_rate"], result["kl"], result["pass_at_k"]
    evaluation.frontier_plot([{"kl": ..., "gold_reward": ..., "label": ...}, ...], "frontier.png")

Pure statistics live in `metrics` (no jax), model work in `harness`, output in `report`; the
command line is `python -m experiments.evaluate --workdir DIR`.
"""

from alignment.evaluation.harness import evaluate_policy
from alignment.evaluation.metrics import (
    default_ks,
    gold_ranked_pairs,
    kl_from_samples,
    mean_pass_at_k,
    mean_stderr,
    pass_at_k,
    ranking_accuracy,
    win_rate,
)
from alignment.evaluation.report import markdown_report, markdown_table, read_json, write_json
from alignment.plotting import frontier_plot

__all__ = [
    "default_ks",
    "evaluate_policy",
    "frontier_plot",
    "gold_ranked_pairs",
    "kl_from_samples",
    "markdown_report",
    "markdown_table",
    "mean_pass_at_k",
    "mean_stderr",
    "pass_at_k",
    "ranking_accuracy",
    "read_json",
    "win_rate",
    "write_json",
]
