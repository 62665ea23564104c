"""Test setup: 8 fake CPU devices (set before jax is imported anywhere) and shared fixtures."""

import os

# LLVM optimisation of the CPU executables is skipped: the suite's tiny models spend far more
# time compiling than running (--xla_backend_optimization_level=0 cut a pipeline test 64 s -> 39 s).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests (and the CLIs they start as subprocesses) compile the same tiny steps: a persistent
# compilation cache, keyed by the HLO, lets each be compiled once per suite run. Results are the
# same executables, so bitwise tests are unaffected.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.environ.get("TMPDIR", "/tmp"), f"alignment-tests-jax-cache-{os.getuid()}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pathlib  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
# test modules share helpers with `import engine_testlib` (one module object, so the reference
# runs it caches are shared across test files)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir():
    """The real Qwen3 tokenizer from ../shared/fixtures; skipped where the fixtures are absent."""
    path = SHARED / "fixtures" / "qwen3-tokenizer"
    if not (path / "tokenizer.json").exists():
        pytest.skip(
            "../shared/fixtures/qwen3-tokenizer is absent (fresh clone outside the workplace)"
        )
    return path
