"""Host-side metrics: NaN/Inf guard, metrics.jsonl (resume-safe), TensorBoard events."""

import math
import os

import jax.numpy as jnp
import pytest

from alignment import metrics


def test_check_finite_names_step_and_metric():
    metrics.check_finite({"loss": 0.5, "grad_norm": 1.0}, step=3)
    with pytest.raises(metrics.NonFiniteError, match=r"step 7: grad_norm=inf, loss=nan"):
        metrics.check_finite({"loss": math.nan, "grad_norm": math.inf, "lr": 1.0}, step=7)


def test_to_host_requires_scalars():
    assert metrics.to_host({"a": jnp.float32(2.5)}) == {"a": 2.5}
    with pytest.raises(ValueError, match="metric 'b' has shape"):
        metrics.to_host({"b": jnp.ones((3,))})


def test_writer_jsonl_tensorboard_and_resume_truncation(tmp_path):
    w = metrics.MetricsWriter(str(tmp_path), total_steps=4, progress=False)
    for step in (1, 2, 3):
        w.write(step, {"loss": 1.0 / step, "tokens_per_s": 10.0})
    w.close()
    rows = metrics.read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[1]["loss"] == 0.5 and rows[1]["tokens_per_s"] == 10.0
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
    # a run killed after step 3 but resumed from a checkpoint at step 2 re-logs step 3 once
    w = metrics.MetricsWriter(
        str(tmp_path), total_steps=4, start_step=2, progress=False, tensorboard=False
    )
    w.write(3, {"loss": 0.25})
    w.close()
    rows = metrics.read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[2]["loss"] == 0.25


def test_disabled_writer_writes_nothing(tmp_path):
    w = metrics.MetricsWriter(str(tmp_path / "w"), total_steps=2, enabled=False)
    w.write(1, {"loss": 1.0})
    w.close()
    assert not os.path.exists(tmp_path / "w")
