"""What every miniature reproduction shares: its command line, per-seed statistics, results.json, plots.

    python -m experiments.reproduce.<name> [--quick] --out DIR [--seeds N] [--workdir W]

A script runs its methods for every seed (stage outputs under `--workdir`, default `OUT/runs`,
are reused, so a re-run only redoes what is missing), then calls `write_results`, which writes
`OUT/results.json`:

    {"name", "paper", "claim", "supported": bool, "verdict", "rows": [row, ...], "settings",
     "quick", "seeds", "wall_clock_s", "plots", "command"}

with one row per method, `{"method": str, "seeds": [...], "<metric>": {"mean", "std", "values"}}`
(`values` per seed, `std` the sample standard deviation), and `OUT/results.md`, the same table
in markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from typing import Iterable, Mapping, Sequence

from alignment.evaluation import write_json

QUICK_SEEDS = 2
FULL_SEEDS = 3
_LAST_ARGV: list[str] = []  # what `parse_args` parsed last: results.json records the command


def parse_args(name: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """--out DIR (required), --quick, --seeds N (default 3, or 2 with --quick), --workdir."""
    p = argparse.ArgumentParser(
        prog=f"python -m experiments.reproduce.{name}",
        description=f"miniature reproduction: {name}",
    )
    p.add_argument("--out", required=True, help="results.json, results.md and plots go here")
    p.add_argument(
        "--quick", action="store_true", help="a shortened run (tiny settings, for tests)"
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"number of seeds (default {FULL_SEEDS}, {QUICK_SEEDS} with --quick)",
    )
    p.add_argument(
        "--workdir", default=None, help="stage outputs (default OUT/runs; reused when present)"
    )
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.seeds is None:
        args.seeds = QUICK_SEEDS if args.quick else FULL_SEEDS
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    args.out = os.path.abspath(args.out)
    args.workdir = os.path.abspath(args.workdir or os.path.join(args.out, "runs"))
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.name = name
    _LAST_ARGV[:] = args.argv
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.workdir, exist_ok=True)
    return args


def stats(values: Iterable[float]) -> dict:
    """{"mean", "std" (sample, ddof=1; 0.0 for one value), "values"}; refuses NaN/Inf."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("stats: no values")
    bad = [i for i, x in enumerate(v) if not math.isfinite(x)]
    if bad:
        raise ValueError(
            f"stats: value {bad[0]} is {v[bad[0]]}: a reproduction never reports NaN/Inf"
        )
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return {"mean": mean, "std": std, "values": v}


def row(method: str, seeds: Sequence[int], **metrics: Sequence[float]) -> dict:
    """One table row: per-seed values of each metric with their mean and spread."""
    out = {"method": method, "seeds": [int(s) for s in seeds]}
    for name, values in metrics.items():
        if len(values) != len(seeds):
            raise ValueError(
                f"row {method!r}: metric {name!r} has {len(values)} values for {len(seeds)} seeds"
            )
        out[name] = stats(values)
    return out


def metric_names(rows: Sequence[Mapping]) -> list[str]:
    names: list[str] = []
    for r in rows:
        names += [
            k for k, v in r.items() if isinstance(v, Mapping) and "mean" in v and k not in names
        ]
    return names


def markdown(rows: Sequence[Mapping]) -> str:
    """| method | metric (mean ± std) | ... |"""
    names = metric_names(rows)
    lines = ["| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in rows:
        cells = [f"{r[n]['mean']:.3f} ± {r[n]['std']:.3f}" if n in r else "" for n in names]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(
    out: str,
    *,
    name: str,
    paper: str,
    claim: str,
    supported: bool,
    verdict: str,
    rows: Sequence[Mapping],
    settings: Mapping,
    quick: bool,
    wall_clock_s: float,
    plots: Sequence[str] = (),
) -> dict:
    """OUT/results.json and OUT/results.md; prints the table and the verdict. Returns the dict."""
    if not rows:
        raise ValueError(f"{name}: no result rows")
    result = {
        "name": name,
        "paper": paper,
        "claim": claim,
        "supported": bool(supported),
        "verdict": verdict,
        "rows": list(rows),
        "settings": dict(settings),
        "quick": bool(quick),
        "seeds": sorted({s for r in rows for s in r.get("seeds", ())}),
        "wall_clock_s": round(float(wall_clock_s), 1),
        "plots": [os.path.abspath(p) for p in plots],
        "command": " ".join(
            ["python -m", f"experiments.reproduce.{name}"] + [shlex.quote(a) for a in _LAST_ARGV]
        ),
    }
    write_json(result, os.path.join(out, "results.json"))
    table = markdown(rows)
    text = (
        f"# {name}: {paper}\n\n**Claim:** {claim}\n\n{table}\n\n**Supported:** {'yes' if supported else 'no'}"
        f" — {verdict}\n\nWall-clock: {wall_clock_s:.0f} s{' (quick)' if quick else ''}.\n"
    )
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    print(text)
    return json.loads(json.dumps(result))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_plot(rows: Sequence[Mapping], metric: str, path: str, *, title: str) -> str:
    """Mean ± std of `metric` per method, per-seed values as dots."""
    plt = _pyplot()
    rows = [r for r in rows if metric in r]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(rows), 3.2))
    for i, r in enumerate(rows):
        m = r[metric]
        ax.bar(i, m["mean"], yerr=m["std"], capsize=4, color="C0", alpha=0.7)
        ax.plot([i] * len(m["values"]), m["values"], "k.", ms=4)
    ax.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=20, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def line_plot(
    series: Mapping[str, Sequence[tuple[float, float, float]]],
    path: str,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
) -> str:
    """One line per series of (x, mean, std) points, with a ±std band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for label, pts in series.items():
        pts = sorted(pts)
        xs, ms, ss = [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]
        ax.plot(xs, ms, marker="o", ms=3, label=label)
        ax.fill_between(
            xs, [m - s for m, s in zip(ms, ss)], [m + s for m, s in zip(ms, ss)], alpha=0.2
        )
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
