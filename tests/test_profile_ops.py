"""scripts/profile_ops.py: op times read back from JAX's profiler, named as in the compiled program."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from tests.conftest import REPO_ROOT

SCRIPT = os.path.join(REPO_ROOT, "scripts", "profile_ops.py")


def load_script():
    spec = importlib.util.spec_from_file_location("profile_ops", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_op_times_name_the_compiled_programs_ops(tmp_path):
    profile_ops = load_script()
    # A traced trip count: XLA cannot unroll the loop, so the body's ops run once per step.
    matmuls = jax.jit(lambda a, n: jax.lax.fori_loop(0, n, lambda i, x: jnp.tanh(x @ a), a))
    a, steps = jnp.full((256, 256), 0.01, jnp.float32), jnp.int32(30)
    matmuls(a, steps).block_until_ready()  # compiled outside the trace
    with jax.profiler.trace(str(tmp_path)):
        matmuls(a, steps).block_until_ready()
    times = profile_ops.op_times(str(tmp_path))
    assert times and all(ns > 0 and calls > 0 for ns, calls in times.values())
    hlo = matmuls.lower(a, steps).compile().as_text()
    for program, op in times:  # every op is one of the program's, by its HLO name
        assert f"%{op} " in hlo and "lambda" in program, (program, op)
    assert any(calls == 30 for _, calls in times.values()), times  # the loop body's ops, once per step


def test_report_ranks_ops_by_time_with_their_share():
    times = {("jit_a", "fusion.1"): (1_000_000_000, 10), ("jit_b", "dot.2"): (3_000_000_000, 5)}
    text = load_script().report(times, top=1)
    lines = text.splitlines()
    assert lines[0] == "op time 4.000 s in 2 ops; the 1 longest:"
    assert lines[1].split() == ["3.000", "s", "5", "calls", "75.0%", "dot.2", "(jit_b)"]


def test_the_command_runs_a_script_with_its_own_arguments(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        "import sys\nimport jax, jax.numpy as jnp\n"
        "n = int(sys.argv[1])\n"
        "jax.jit(lambda x: jnp.sin(x) @ x)(jnp.ones((n, n))).block_until_ready()\n"
        "sys.exit(0)\n"
    )
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--top=3", str(script), "64"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("op time ") and " calls " in proc.stdout
    bad = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "missing.py")], capture_output=True, text=True)
    assert bad.returncode == 2 and "is not a file" in bad.stderr
