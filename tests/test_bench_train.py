"""`python -m experiments.bench train`: the analytic FLOPs count agrees with XLA's on a step."""

import pytest

from experiments import bench_train


def test_bench_train_flops_match_the_analytic_count():
    result = bench_train.bench_train(
        [
            "--preset",
            "tiny",
            "--vocab_size",
            "1024",
            "--batch",
            "8",
            "--seq",
            "32",
            "--chunk_size",
            "32",
            "--steps",
            "1",
            "--no_logprob_remat",
        ]
    )
    # 6 x params x tokens + attention covers the step to within a few percent (norms, softmax, Adam)
    assert result["flops_ratio"] == pytest.approx(1.0, abs=0.1), result
    assert result["tokens_per_s"] > 0 and result["peak_bytes"] > 0
    assert "flops_note" not in result
