"""Nothing lost, nothing silently wrong: the workdir lock, validation before anything is written,
the seed's range, damaged checkpoints, exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from cljax import main, workdir
from cljax.config import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(**changes):
    """One strategy, one run, two batches, one epoch: seconds on a CPU."""
    config = base_config()
    config.strategies = "naive"
    config.hidden_sizes = (8,)
    config.num_runs = 1
    config.num_batches = 2
    config.epochs_first = config.epochs = 1
    for field, value in changes.items():
        config[field] = value
    return config


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def files_of(directory) -> dict[str, float]:
    return {
        os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, names in os.walk(directory) for f in names
    }


def test_second_job_on_a_locked_workdir_exits_2_naming_the_holder(tmp_path, capsys):
    path = str(tmp_path / "w")
    with workdir.WorkdirLock(path):  # this process holds the workdir, as a running job would
        before = files_of(path)
        assert main.run(tiny(), path) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"process {os.getpid()}" in line and "in use" in line
        assert files_of(path) == before  # nothing written
    assert main.run(tiny(), path) == 0  # released: the job runs


def test_lock_dies_with_a_killed_holder(tmp_path):
    path = str(tmp_path / "w")
    code = f"from cljax.workdir import WorkdirLock; WorkdirLock({path!r}).__enter__(); "
    code += "print('held', flush=True); input()"
    holder = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir.WorkdirBusy, match=f"process {holder.pid}"):
        workdir.WorkdirLock(path).__enter__()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    with workdir.WorkdirLock(path):  # no stale lock
        pass
