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
from tests.helpers import without_timings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(**changes):
    """One strategy, one run, two batches, one epoch: seconds on a CPU."""
    config = base_config()
    config.strategies = "naive"
    config.hidden_sizes = (8,)
    config.num_runs = 1
    config.num_batches = 2
    config.epochs_first = config.epochs = 1
    config.report = False  # the report has its own tests
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


class Interrupted(Exception):
    pass


def interrupted_workdir(path: str, config, monkeypatch, after_saves: int = 2) -> None:
    """``path`` as a job leaves it when stopped right after its ``after_saves``-th checkpoint."""
    from cljax import checkpoint

    save = checkpoint.Checkpoints.save
    count = [0]

    def save_then_stop(self, *args, **kwargs):
        save(self, *args, **kwargs)
        count[0] += 1
        if count[0] == after_saves:
            raise Interrupted

    with monkeypatch.context() as m:
        m.setattr(checkpoint.Checkpoints, "save", save_then_stop)
        with pytest.raises(Interrupted):
            main.run(config, path)


def results_without_timings(path: str) -> dict:
    from cljax import diagnostics

    return without_timings(diagnostics.read_results(path))


@pytest.fixture(scope="module")
def reference_3(tmp_path_factory):
    """Results of the uninterrupted 3-batch job."""
    path = str(tmp_path_factory.mktemp("reference") / "w")
    assert main.run(tiny(num_batches=3), path) == 0
    return results_without_timings(path)


def damage(path: str, how: str) -> None:
    if how == "delete":
        os.unlink(path)
    elif how == "truncate":
        with open(path, "r+b") as f:
            f.truncate(max(os.path.getsize(path) // 2, 0))
    else:  # flip one byte in the middle: the size stays
        with open(path, "r+b") as f:
            data = bytearray(f.read())
            data[len(data) // 2] ^= 0xFF
            f.seek(0)
            f.write(bytes(data))


def test_damaged_newest_checkpoint_falls_back_to_the_intact_one(tmp_path, monkeypatch, capsys, reference_3):
    """Each file of the newest checkpoint damaged in turn (flipped byte, truncated, deleted): the rerun
    warns in one line, resumes from the older checkpoint and ends with the uninterrupted results."""
    import shutil

    template = str(tmp_path / "template")
    interrupted_workdir(template, tiny(num_batches=3), monkeypatch)
    steps = sorted(int(d) for d in os.listdir(os.path.join(template, "checkpoints")) if d.isdigit())
    assert steps == [0, 1]
    newest = os.path.join(template, "checkpoints", "1")
    files = sorted(os.path.relpath(os.path.join(d, f), newest) for d, _, names in os.walk(newest) for f in names)
    assert "cljax_sha256.json" in files and len(files) > 5
    capsys.readouterr()
    # The checksum manifest, and a spread of the others (array shards, metadata, progress): each rerun
    # is a whole job, so not every file of the step.
    others = [f for f in files if f != "cljax_sha256.json"]
    files = ["cljax_sha256.json", *others[:: max(len(others) // 4, 1)]]
    for i, name in enumerate(files):
        for how in ("flip", "truncate", "delete") if name == files[0] else [("flip", "truncate", "delete")[i % 3]]:
            path = str(tmp_path / f"case{i}-{how}")
            shutil.copytree(template, path)
            damage(os.path.join(path, "checkpoints", "1", name), how)
            assert main.run(tiny(num_batches=3), path) == 0, (name, how)
            out, err = capsys.readouterr()
            warnings = [line for line in err.splitlines() if line.strip()]
            assert len(warnings) == 1 and warnings[0].startswith("warning: skipping damaged checkpoint"), (name, err)
            assert "resuming after batch 1/3" in out, (name, how, out)
            assert results_without_timings(path) == reference_3, (name, how)


def test_finished_runs_are_never_retrained(tmp_path, capsys, reference_3):
    """A finished job with its checkpoints deleted, then also its runs/ files: the rerun trains nothing
    (the records are in runs/, then in results.json) and writes the same results."""
    import shutil

    path = str(tmp_path / "w")
    assert main.run(tiny(num_batches=3), path) == 0
    for directory in ("checkpoints", "runs"):
        shutil.rmtree(os.path.join(path, directory))
        capsys.readouterr()
        assert main.run(tiny(num_batches=3), path) == 0
        out = capsys.readouterr().out
        assert " batch 1/3" not in out and " batch 3/3" not in out, out
        assert results_without_timings(path) == reference_3


def test_rerun_of_an_overwrite_command_resumes(tmp_path, monkeypatch, capsys, finished):
    """overwrite=True discards another config's results once; the interrupted command, rerun as it was,
    resumes instead of starting again."""
    import shutil

    path = str(tmp_path / "w")
    shutil.copytree(finished, path)  # results of tiny(): another config than the one below
    config = tiny(num_batches=3, overwrite=True)
    interrupted_workdir(path, config, monkeypatch)
    capsys.readouterr()
    assert main.run(config, path) == 0
    assert "resuming after batch 2/3" in capsys.readouterr().out


CONFIG_FILES = {  # config files a user might write by mistake, and a word of the expected line
    "typo.py": (
        "from cljax.config import base_config\ndef get_config():\n    c = base_config()\n"
        "    c.learning_rate = 0.1\n    return c\n",
        "learning_rate: the config has no such field",
    ),
    "typo_section.py": (
        "from cljax.config import base_config\ndef get_config():\n    c = base_config()\n"
        "    c.naive.lrr = 0.1\n    return c\n",
        "naive.lrr: strategy 'naive' has no field 'lrr'",
    ),
    "deleted.py": (
        "from cljax.config import base_config\ndef get_config():\n    c = base_config()\n"
        "    del c['lr']\n    return c\n",
        "lr: the config has no value",
    ),
    "no_get_config.py": ("X = 1\n", "get_config"),
}


def test_command_line_mistakes_exit_2_with_one_line(tmp_path):
    """Config files that add, delete or lack fields, an empty --workdir and a workdir that is a file:
    exit 2, one line, nothing written (the processes run concurrently: each stops before any jit)."""
    (tmp_path / "a_file").write_text("")
    cases = []
    for name, (text, words) in CONFIG_FILES.items():
        (tmp_path / name).write_text(text)
        cases.append(([f"--config={tmp_path / name}", f"--workdir={tmp_path / ('w-' + name)}"], words))
    cases.append(([f"--config={ROOT}/configs/default.py", "--workdir="], "--workdir is empty"))
    cases.append(([f"--config={ROOT}/configs/default.py", f"--workdir={tmp_path / 'a_file'}"], "is not a directory"))
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cljax.main", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args, _ in cases
    ]
    for (args, words), proc in zip(cases, procs, strict=True):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (args, err)
        assert words in one_error_line(err), (args, err)
    assert sorted(os.listdir(tmp_path)) == sorted(["a_file", *CONFIG_FILES])  # no workdir created


@pytest.mark.parametrize(
    ("failure", "code", "words"),
    [
        (OSError(28, "No space left on device"), 1, "No space left on device"),
        (OSError(30, "Read-only file system"), 1, "Read-only file system"),
        (KeyboardInterrupt(), 130, "interrupted; rerun the same command to resume"),
    ],
    ids=["disk full", "read-only", "ctrl-c"],
)
def test_environment_failures_and_ctrl_c_give_one_line(tmp_path, monkeypatch, capsys, failure, code, words):
    from cljax import checkpoint

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(checkpoint.Checkpoints, "save", fail)  # the first write of a checkpoint fails
    assert main.run(tiny(), str(tmp_path / "w")) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in err, err


def test_diverged_run_gives_exit_3(tmp_path, monkeypatch, capsys):
    """A job whose run diverged ends with its results written and exit code 3 (the divergence itself
    is simulated: its detection is tests/test_divergence.py's)."""
    from cljax import experiment

    monkeypatch.setattr(experiment, "divergence", lambda host, r, g, i: {"batch": i, "step": 0, "reason": "test"})
    path = tmp_path / "w"
    assert main.run(tiny(), str(path)) == main.EXIT_DIVERGED == 3
    assert "error: 1 run(s) diverged: naive run 0" in capsys.readouterr().err
    assert (path / "results.json").exists()


def test_checkpoints_hold_only_the_chunk_in_flight(tmp_path):
    """Runs one at a time: each finished run is written once, to its own file under runs/; the newest
    checkpoint's progress holds the chunk in flight only (its size does not grow with finished runs)."""
    import json

    from cljax import checkpoint
    from cljax.config import ConfigError, validate

    path = tmp_path / "w"
    assert main.run(tiny(num_runs=2, vmap_runs="false"), str(path)) == 0
    files = sorted(os.listdir(path / "runs"))
    assert files == ["chunk-0.json", "chunk-1.json"]
    for k, name in enumerate(files):
        members = json.loads((path / "runs" / name).read_text())["members"]
        assert [(m["entry"], m["record"]["run"]) for m in members] == [("naive", k)]
    checkpoints = checkpoint.Checkpoints(str(path / "checkpoints"), writable=False)
    progress = checkpoints.progress(checkpoints.latest_step())
    checkpoints.close()
    assert sorted(progress) == ["alive", "batch", "chunk", "records"] and progress["chunk"] == 1
    assert [rec["run"] for row in progress["records"] for rec in row] == [1]
    with pytest.raises(ConfigError, match="num_runs=1001 is invalid; at most 1000"):
        validate(tiny(num_runs=1001))
