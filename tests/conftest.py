"""Test setup: 8 fake CPU devices (set before jax is imported anywhere) and shared fixtures."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir():
    """The real Qwen3 tokenizer from ../shared/fixtures; skipped where the fixtures are absent."""
    path = SHARED / "fixtures" / "qwen3-tokenizer"
    if not (path / "tokenizer.json").exists():
        pytest.skip("../shared/fixtures/qwen3-tokenizer is absent (fresh clone outside the workplace)")
    return path
