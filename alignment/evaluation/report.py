"""Evaluation results as a markdown table / report and as JSON."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

# (column header, result key, stderr key)
COLUMNS = (
    ("gold reward", "gold_reward", "gold_reward_stderr"),
    ("ref. gold reward", "reference_gold_reward", "reference_gold_reward_stderr"),
    ("win rate", "win_rate", None),
    ("KL", "kl", "kl_stderr"),
    ("pass@1", "pass@1", None),
    ("ranking acc.", "ranking_accuracy", None),
    ("length", "response_length", None),
)


def _get(result: Mapping[str, Any], key: str):
    if key.startswith("pass@"):
        table = result.get("pass_at_k")
        return None if table is None else table.get(key[len("pass@") :])
    return result.get(key)


def _fmt(value, stderr=None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        text = f"{value:.4g}"
        return f"{text} ± {stderr:.2g}" if stderr else text
    return str(value)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "\\n")


def markdown_table(results) -> str:
    """A markdown table, one row per run: `results` is one result dict, a list of them, or a
    mapping run name -> result. Columns no run has are left out."""
    if isinstance(results, Mapping) and "gold_reward" in results:
        rows = [("policy", results)]
    elif isinstance(results, Mapping):
        rows = list(results.items())
    else:
        rows = [(str(r.get("run", i)), r) for i, r in enumerate(results)]
    if not rows:
        raise ValueError("markdown_table: no results")
    cols = [c for c in COLUMNS if any(_get(r, c[1]) is not None for _, r in rows)]
    lines = ["| run | " + " | ".join(c[0] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for name, r in rows:
        cells = [_fmt(_get(r, key), r.get(err) if err else None) for _, key, err in cols]
        lines.append(f"| {_escape(str(name))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_report(result: Mapping[str, Any], *, title: str = "Evaluation") -> str:
    """Table, settings, pass@k and example generations of one `evaluate_policy` result."""
    out = [f"# {title}\n", markdown_table(result)]
    settings = {
        k: result[k]
        for k in (
            "task",
            "split",
            "num_prompts",
            "samples_per_prompt",
            "max_new_tokens",
            "temperature",
            "seed",
            "kl_samples",
            "ranking_pairs",
            "ranking_pairs_source",
            "policy",
            "reference",
        )
        if k in result
    }
    out.append("\n" + ", ".join(f"{k}={v}" for k, v in settings.items()) + "\n")
    if result.get("pass_at_k"):
        ks = list(result["pass_at_k"])
        out.append("\n| pass@k | " + " | ".join(ks) + " |\n|---|" + "---|" * len(ks))
        for name in ("pass_at_k", "reference_pass_at_k"):
            if result.get(name):
                out.append(
                    f"| {'policy' if name == 'pass_at_k' else 'reference'} | "
                    + " | ".join(_fmt(result[name][k]) for k in ks)
                    + " |"
                )
        out.append("")
    if result.get("examples"):
        out.append("\n## Examples\n")
        out.append("| prompt | policy | reward | reference | reward |\n|---|---|---|---|---|")
        for ex in result["examples"]:
            out.append(
                f"| {_escape(ex['prompt'])} | {_escape(ex['policy'])} "
                f"| {_fmt(ex['policy_gold_reward'])} "
                f"| {_escape(ex['reference'])} | {_fmt(ex['reference_gold_reward'])} |"
            )
    return "\n".join(out) + "\n"


def read_json(path: str) -> Any:
    """The JSON at `path`, or None when there is no such file (a stage that has not run yet)."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_json(obj: Any, path: str) -> str:
    """Writes `obj` as indented JSON (refusing NaN/Inf, which JSON cannot hold) and returns `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    text = json.dumps(obj, indent=2, allow_nan=False)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)
    return path
