"""Across devices and hosts: the mesh plan, runs and data sharded over 8 CPU devices equal one device,
and two processes on localhost (jax.distributed, CPU collectives) equal one process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cljax import experiment, mesh
from cljax.config import ConfigError, base_config
from tests.conftest import REPO_ROOT
from tests.helpers import without_timings


def test_choose_auto_gives_devices_to_runs_when_members_fill_them():
    assert mesh.choose("auto", 8, 10, 1, 32) == (8, 1, 0, 16)  # 10 runs padded to 16 (6 idle)
    assert mesh.choose("auto", 8, 4, 2, 32) == (8, 1, 0, 8)  # 8 divides neither 4 runs nor 2 points: pad R
    assert mesh.choose("auto", 4, 4, 3, 32) == (4, 1, 0, 4)  # runs axis over R
    assert mesh.choose("auto", 4, 3, 4, 32) == (4, 1, 1, 3)  # over G: 4 divides the 4 grid points
    assert mesh.choose("auto", 8, 2, 1, 32) == (1, 8, -1, 2)  # fewer members than devices: data parallel
    assert mesh.choose("auto", 8, 1, 1, 12) == (1, 4, -1, 1)  # the largest data group dividing the mini-batch


def test_choose_explicit_sizes_and_clear_errors():
    assert mesh.choose("runs:4,data:2", 8, 4, 1, 32) == (4, 2, 0, 4)
    assert mesh.choose("runs:2", 8, 3, 1, 32) == (2, 1, 0, 4)  # uses 2 of the 8 devices; 3 runs padded to 4
    with pytest.raises(ConfigError, match=r"mesh='runs:4,data:4' needs 16 devices .* but 8 are available"):
        mesh.choose("runs:4,data:4", 8, 4, 1, 32)
    with pytest.raises(ConfigError, match=r"batch_size=30 cannot be split over data=4"):
        mesh.choose("data:4", 4, 1, 1, 30)
    for bad in ("runs=4", "runs:0", "gpus:2", "runs:2,runs:2"):
        with pytest.raises(ConfigError, match=rf"mesh={bad!r} is invalid; write auto or axis sizes"):
            mesh.parse_mesh(bad)


def test_config_refuses_a_bad_mesh_before_training(tmp_path):
    config = base_config()
    config.mesh = "runs:two"
    with pytest.raises(ConfigError, match="mesh='runs:two' is invalid"):
        experiment.run_experiment(config, str(tmp_path / "w"), log=lambda e: None, show_progress=False)
    assert not (tmp_path / "w").exists()


SHARDED = textwrap.dedent(
    """
    import json, os, sys
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    from cljax import experiment
    from cljax.config import base_config
    out = {}
    # One device trains both; each mesh one of them (CI time).
    for spec, names in (("runs:1", "lwf,cwr_plus,icarl"), ("runs:4,data:2", "lwf,icarl"), ("runs:8", "cwr_plus")):
        c = base_config()
        c.strategies, c.num_runs, c.num_batches, c.hidden_sizes = names, 3, 2, (16,)
        c.epochs_first = c.epochs = 1
        for name in ("lwf", "cwr_plus"):
            c[name].epochs = None
        c.mesh, c.compilation_cache, c.report = spec, False, False
        res = experiment.run_experiment(c, os.path.join(sys.argv[1], spec.replace(":", "_").replace(",", "_")),
                                        log=lambda e: None, show_progress=False)
        out[spec] = {k: [[r["accuracy"], r["loss"]] for r in e["runs"]] for k, e in res["strategies"].items()}
    print(json.dumps({"devices": jax.device_count(), "results": out}))
    """
)


@pytest.mark.slow
def test_runs_and_data_sharded_over_8_devices_equal_one_device(tmp_path):
    """3 runs on one device equal LwF's (per-member soft targets) and iCaRL's (epochs over each
    member's stored rows too) on a 4 x 2 mesh (runs sharded over 4 devices, mini-batches over 2)
    and CWR+'s (cached features after B_1) with the runs axis over 8
    devices (3 runs padded with idle copies to 8)."""
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED, str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    one = out["results"]["runs:1"]
    for spec in ("runs:4,data:2", "runs:8"):
        assert out["results"][spec], spec
        for name, runs in out["results"][spec].items():
            assert len(runs) == 3  # the padding runs left no records
            for (accuracy, loss), (accuracy1, loss1) in zip(runs, one[name], strict=True):
                np.testing.assert_allclose(accuracy, accuracy1, atol=1e-3, err_msg=f"{spec} {name}")
                np.testing.assert_allclose(loss, loss1, rtol=1e-4, err_msg=f"{spec} {name}")


def test_only_process_0_writes(tmp_path, monkeypatch):
    """A process other than 0 trains like the others but writes no results, diagnostics or report."""
    config = base_config()
    config.strategies, config.num_runs, config.num_batches, config.hidden_sizes = "naive", 1, 1, (8,)
    monkeypatch.setattr(experiment, "is_primary", lambda: False)
    results = experiment.run_experiment(config, str(tmp_path), log=lambda e: None, show_progress=False)
    assert results["strategies"]["naive"]["runs"][0]["accuracy"]  # it trained
    assert sorted(os.listdir(tmp_path)) == ["checkpoints"]  # orbax's, written by every process together


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(workdir: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-u",
        "-m",
        "cljax.main",
        "--config.strategies=naive",
        "--config.num_runs=2",
        "--config.num_batches=3",
        "--config.hidden_sizes=(16,)",
        "--config.epochs_first=1",
        "--config.epochs=1",
        "--config.report=False",
        f"--workdir={workdir}",
        *extra,
    ]


@pytest.mark.slow
def test_two_processes_equal_one_and_resume_after_both_are_killed(tmp_path):
    """Two processes on localhost (jax.distributed, Gloo CPU collectives), the runs sharded over
    their devices: both are SIGKILLed after a checkpoint, restarted, and end with the results.json
    of one process (accuracies and losses); only process 0 prints the results."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO_ROOT}
    single = subprocess.run(cli(str(tmp_path / "one")), cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-3000:]
    workdir = str(tmp_path / "two")

    def start(attempt: int) -> list[subprocess.Popen]:
        port = free_port()
        procs = []
        for pid in range(2):
            flags = [
                f"--config.distributed.coordinator=127.0.0.1:{port}",
                "--config.distributed.num_processes=2",
                f"--config.distributed.process_id={pid}",
            ]
            log = open(tmp_path / f"p{pid}-{attempt}.log", "w")  # noqa: SIM115 (closed with the process)
            procs.append(
                subprocess.Popen(
                    cli(workdir, *flags), cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True
                )
            )
        return procs

    first = start(0)
    for line in first[0].stdout:  # process 0's progress: kill both once batch 1 of naive is checkpointed
        if line.startswith("naive") and "batch 1/3: accuracy" in line:
            for proc in first:
                proc.send_signal(signal.SIGKILL)
            break
    for proc in first:
        proc.wait(timeout=600)
    assert all(proc.returncode == -signal.SIGKILL for proc in first)
    second = start(1)
    outputs = [proc.communicate(timeout=900)[0] for proc in second]
    assert [proc.returncode for proc in second] == [0, 0], (tmp_path / "p0-1.log").read_text()[-3000:]
    assert "resuming after batch 1/3" in outputs[0]
    assert "results:" in outputs[0] and "results:" not in outputs[1] and "resuming" not in outputs[1]
    with open(tmp_path / "one" / "results.json") as f:
        expected = without_timings(json.load(f), "distributed")  # each process has its own id
    with open(os.path.join(workdir, "results.json")) as f:
        got = without_timings(json.load(f), "distributed")  # each process has its own id
    for name, entry in expected["strategies"].items():
        for a, b in zip(entry["runs"], got["strategies"][name]["runs"], strict=True):
            assert a["accuracy"] == b["accuracy"], name
            np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
