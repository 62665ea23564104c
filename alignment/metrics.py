"""Metrics on the host: NaN/Inf guard, `metrics.jsonl`, TensorBoard events and a progress bar.

The step returns device scalars; the loop hands them to `MetricsWriter.write` one step late so
the host never waits on the device it just launched. Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import numpy as np
from tensorboardX import SummaryWriter
from tqdm import tqdm

JSONL = "metrics.jsonl"
PROGRESS_KEYS = ("loss", "eval_loss", "reward_accuracy", "grad_norm", "tokens_per_s")


class NonFiniteError(FloatingPointError):
    """A metric became NaN or Inf; raised before anything is checkpointed."""


def to_host(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Device scalars -> Python floats (blocks until they are ready)."""
    out = {}
    for k, v in metrics.items():
        a = np.asarray(v)
        if a.size != 1:
            raise ValueError(
                f"metric {k!r} has shape {a.shape}; the step must reduce metrics to scalars"
            )
        out[k] = float(a.reshape(()))
    return out


def check_finite(metrics: Mapping[str, float], step: int) -> None:
    """Raises `NonFiniteError` naming the step and every non-finite metric."""
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        shown = ", ".join(f"{k}={metrics[k]}" for k in bad)
        raise NonFiniteError(
            f"non-finite metric(s) at step {step}: {shown}; stopping without checkpointing "
            "this state (lower optim.learning_rate, check the data, or set optim.max_grad_norm)"
        )


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsWriter:
    """Appends one JSON object per logged step to `WORKDIR/metrics.jsonl`, mirrors it to
    TensorBoard and advances a tqdm bar.

    On resume from `start_step`, lines from a killed run with step > start_step are dropped so
    the file holds each step once.
    """

    def __init__(
        self,
        workdir: str,
        *,
        total_steps: int,
        start_step: int = 0,
        enabled: bool = True,
        tensorboard: bool = True,
        progress: bool | None = None,
    ):
        self.enabled = enabled
        self.path = os.path.join(workdir, JSONL)
        self._tb = None
        self._bar = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        if os.path.exists(self.path):
            kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= start_step]
            with open(self.path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
        self._file = open(self.path, "a")
        if tensorboard:
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        if progress is None:
            progress = sys.stderr.isatty()
        if progress:
            self._bar = tqdm(
                total=total_steps, initial=start_step, dynamic_ncols=True, desc="train"
            )
        self._last = start_step

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {
            "step": int(step),
            **{k: float(v) for k, v in metrics.items()},
            "time": time.time(),
        }
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), int(step))
        if self._bar is not None:
            self._bar.update(int(step) - self._last)
            self._bar.set_postfix({k: f"{metrics[k]:.4g}" for k in PROGRESS_KEYS if k in metrics})
        self._last = int(step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()
