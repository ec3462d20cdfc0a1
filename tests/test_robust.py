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


LATE_FAILURES = {  # each passes the early field checks and fails a later one
    "seed beyond 32 bits": dict(seed=2**32),
    "huge seed": dict(seed=10**20),
    "mini-batches beyond the device's memory": dict(batch_size=10**12),
    "missing data files": dict(dataset="fashion_mnist", data_dir="/nonexistent/fashion"),
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A workdir holding a finished tiny job."""
    path = str(tmp_path_factory.mktemp("finished") / "w")
    assert main.run(tiny(), path) == 0
    return path


@pytest.mark.parametrize("changes", LATE_FAILURES.values(), ids=LATE_FAILURES)
def test_overwrite_discards_nothing_when_a_check_fails(finished, tmp_path, capsys, changes):
    """overwrite=True with another config that fails a check: exit 2, one line, the old results
    untouched; on a new workdir nothing is created."""
    before = files_of(finished)
    config = tiny(overwrite=True, lr=0.01, **changes)
    assert main.run(config, finished) == 2
    one_error_line(capsys.readouterr().err)
    assert files_of(finished) == before
    fresh = tmp_path / "new"
    assert main.run(config, str(fresh)) == 2
    one_error_line(capsys.readouterr().err)
    assert not fresh.exists()


def test_seed_range(capsys):
    from cljax.config import ConfigError, validate

    validate(tiny(seed=2**32 - 1))
    for seed in (2**32, 2**40, -1, True):
        with pytest.raises(ConfigError, match=r"seed=.* it must be an integer in \[0, 2\*\*32\)"):
            validate(tiny(seed=seed))
