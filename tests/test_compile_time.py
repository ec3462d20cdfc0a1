"""The compile-time report: CompileClock sees JAX's compilations (and only them), and a job writes
its per-strategy compile and wall times to timings.json."""

import json

import jax
import jax.numpy as jnp

from cljax.compile_time import PHASES, CompileClock, since
from cljax.experiment import run_experiment


def test_clock_counts_a_compilation_once():
    @jax.jit
    def f(x):
        return jnp.sin(x) * 3.0 + x.sum()

    x, y = jnp.arange(7.0), jnp.ones(7)
    with CompileClock() as clock:
        f(x).block_until_ready()
        first = clock.snapshot()
        f(y).block_until_ready()  # same shapes: no new compilation
        second = clock.snapshot()
    assert set(first) == set(PHASES.values())
    assert first["trace"] > 0 and first["compile"] > 0
    assert since(second, first)["total"] == 0.0
    f(jnp.arange(3.0)).block_until_ready()  # after the block: not counted
    assert clock.snapshot() == second


def test_job_writes_compile_and_wall_times(tiny_config, tmp_path, monkeypatch):
    """timings.json, like results.json, is written while the job holds the workdir's lock (a second
    job on the workdir cannot start in between)."""
    from cljax import workdir

    release = workdir.WorkdirLock.__exit__
    seen_at_release = []

    def checked_release(self, *exc):
        seen_at_release.append((tmp_path / "timings.json").exists())
        return release(self, *exc)

    monkeypatch.setattr(workdir.WorkdirLock, "__exit__", checked_release)
    tiny_config.strategies, tiny_config.report = "naive,ewc", True
    run_experiment(tiny_config, str(tmp_path), log=lambda event: None, show_progress=False)
    assert seen_at_release == [True]
    with open(tmp_path / "timings.json") as f:
        timings = json.load(f)
    assert set(timings["strategies"]) == {"naive", "ewc"}
    for spent in timings["strategies"].values():
        assert 0 < spent["compile"]["total"] <= spent["wall_seconds"]
    job_compile = timings["compile"]["total"]
    assert sum(s["compile"]["total"] for s in timings["strategies"].values()) <= job_compile + 1e-6
    assert timings["wall_seconds"] >= job_compile and timings["report_seconds"] > 0
    with open(tmp_path / "results.json") as f:
        assert "timings" not in f.read()  # results stay comparable between reruns
