"""Figures as PNG files, drawn on matplotlib's Agg canvas directly (no pyplot, so importing this
module never changes a global backend and works on headless machines).

    frontier_plot([{"kl": 0.4, "gold_reward": 0.7, "label": "beta=0.1", "series": "dpo"}, ...], "f.png")
    metrics_plot(metrics_jsonl_rows, ["loss", "kl"], "curves.png")
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _number(point: Mapping[str, Any], key: str, i: int) -> float:
    if key not in point:
        raise ValueError(f"frontier point {i} has no {key!r} (keys: {sorted(point)})")
    value = point[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"frontier point {i}: {key} must be a finite number, got {value!r}")
    return float(value)


def _save(fig: Figure, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=120)
    return path


def frontier_plot(
    points: Sequence[Mapping[str, Any]],
    path: str,
    *,
    title: str = "gold reward vs KL",
    x_key: str = "kl",
    y_key: str = "gold_reward",
) -> str:
    """Reward-vs-KL frontier (Gao et al. 2023, "Scaling laws for reward model overoptimization";
    the DPO paper's Fig. 2): one marker per run or checkpoint, points of the same `series` joined in
    order of KL, `label` written next to each point, error bars from `<key>_stderr` when present.
    Returns `path`."""
    if not points:
        raise ValueError("frontier_plot: no points to plot")
    series: dict[str, list[tuple[float, float, float, float, str]]] = {}
    for i, point in enumerate(points):
        x, y = _number(point, x_key, i), _number(point, y_key, i)
        xerr = float(point.get(f"{x_key}_stderr") or 0.0)
        yerr = float(point.get(f"{y_key}_stderr") or 0.0)
        label = str(point.get("label", ""))
        series.setdefault(str(point.get("series", "")), []).append((x, y, xerr, yerr, label))
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for name, pts in series.items():
        pts.sort()
        xs, ys, xerrs, yerrs, labels = zip(*pts)
        ax.errorbar(
            xs,
            ys,
            xerr=xerrs,
            yerr=yerrs,
            marker="o",
            capsize=2,
            linestyle="-" if len(pts) > 1 else "none",
            label=name or None,
        )
        for x, y, label in zip(xs, ys, labels):
            if label:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("KL(policy || reference) [nats / sequence]" if x_key == "kl" else x_key)
    ax.set_ylabel("mean gold reward" if y_key == "gold_reward" else y_key)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if any(series):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def metrics_plot(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], path: str) -> str:
    """Training curves: one panel per key of `metrics.jsonl` rows (dicts with a "step"), skipping
    rows without that key. Returns `path`."""
    if not keys:
        raise ValueError("metrics_plot: no keys to plot")
    fig = Figure(figsize=(4 * len(keys), 3))
    for j, key in enumerate(keys):
        pts = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
        if not pts:
            raise ValueError(f"metrics_plot: no row holds both 'step' and {key!r}")
        ax = fig.add_subplot(1, len(keys), j + 1)
        ax.plot(*zip(*pts))
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
