"""Shared fixtures: tiny configs that train in seconds on 2 CPU cores."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

# Most of the suite's time is XLA compiling hundreds of small programs; LLVM's optimisation passes
# are a third of it (measured: 26% less CPU time on test_baselines + test_architectural) and change
# results only by float rounding. Set before JAX starts its backend; subprocesses inherit it.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()

import jax  # noqa: E402

from cljax.config import base_config  # noqa: E402

# Hand-computed comparisons need true float32 matmuls: GPUs default to TF32-like precision
# (seen on an H200: relative errors of 1e-3 in a one-step SGD check). No effect on CPU.
jax.config.update("jax_default_matmul_precision", "highest")

# Tests build the same small programs many times (and the CLI tests in subprocesses): JAX's
# persistent compilation cache, shared by the whole session, compiles each of them once.
os.environ.setdefault("CLJAX_CACHE_DIR", tempfile.mkdtemp(prefix="cljax-xla-"))
jax.config.update("jax_compilation_cache_dir", os.environ["CLJAX_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@pytest.fixture
def tiny_config():
    """Split digits, small MLP, one run: the smallest real experiment."""
    config = base_config()
    config.hidden_sizes = (64,)
    config.num_runs = 1
    config.epochs_first = 3
    config.epochs = 3
    config.lr_first = 0.1
    config.lr = 0.1
    config.report = False  # drawn only where a test reads it (test_report.py sets it back)
    return config


# With pytest-xdist (--dist=loadgroup): a file whose module-scoped fixtures run jobs stays on one
# worker, so they run once; these files' tests are independent (their fixtures only load the
# digits), so they spread over the workers: the long files no longer end the run on one worker.
SPREAD_FILES = {"test_stream.py", "test_rehearsal.py", "test_baselines.py", "test_fisher.py", "test_adam_nu.py"}


def pytest_collection_modifyitems(items):
    for item in items:
        name = os.path.basename(str(item.fspath))
        if name not in SPREAD_FILES:
            item.add_marker(pytest.mark.xdist_group(name))
