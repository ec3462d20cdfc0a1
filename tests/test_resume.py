"""Checkpoints and exact resume: SIGKILLed CLI runs, in-process resume, determinism, workdir checks.

Every strategy in the registry is covered (parametrized over ``STRATEGIES``), so strategies
added later are tested as they land.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from cljax import checkpoint, diagnostics, experiment, main
from cljax.config import base_config
from cljax.scenarios import build_scenario, load_dataset
from cljax.strategies import STRATEGIES
from tests.helpers import without_timings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Restored in process: every kind of strategy state (CWR shares CWR+'s head state, SI AR1's
# importance and path, iCaRL the memory of REHE and GEM; Cumulative resumes through the CLI below);
# few, to keep CI short.
NAMES = [name for name in STRATEGIES if name not in ("cwr", "si", "icarl", "cumulative")]
# Run by the CLI (uninterrupted, and SIGKILLed twice): plain; union and restart; head and SI; memory
# and per-step replay.
CLI_NAMES = ["naive", "cumulative", "ar1", "rehe"]
NUM_RUNS = 2
NUM_BATCHES = 3
KILL_AFTER = 2  # SIGKILL once the line of batch KILL_AFTER is out: the run is then in batch KILL_AFTER + 1


def tiny_overrides() -> dict:
    """Digits, a 16-unit MLP, 3 batches x 2 runs, one epoch everywhere, SGD with momentum, every strategy."""
    overrides = {
        "dataset": "digits",
        "hidden_sizes": (16,),
        "num_runs": NUM_RUNS,
        "num_batches": NUM_BATCHES,
        "epochs_first": 1,
        "epochs": 1,
        "momentum": 0.9,  # optimizer state that matters (the trace) must survive a restart too
        "strategies": ",".join(CLI_NAMES),
        "report": False,  # the report has its own tests
    }
    config = base_config()
    for name in NAMES:  # sections may set their own epochs (Tables 4-5); keep the test short
        section = config.get(name)
        if section is not None:
            overrides[f"{name}.epochs_first"] = 1
            overrides[f"{name}.epochs"] = 1
    return overrides


def tiny_config():
    config = base_config()
    for field, value in tiny_overrides().items():
        *path, last = field.split(".")
        node = config
        for part in path:
            node = node[part]
        node[last] = value
    return config


def cli(workdir: str) -> list[str]:
    args = [f"--config.{field}={value}" for field, value in tiny_overrides().items()]
    return [sys.executable, "-u", "-m", "cljax.main", "--config=configs/default.py", *args, f"--workdir={workdir}"]


def start(workdir: str, stderr) -> subprocess.Popen:
    """The CLI on ``workdir``; stdout piped (progress lines), stderr to the open file ``stderr``."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(cli(workdir), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)


def differences(a, b, path: str = "") -> list[str]:
    """Where two JSON-like trees differ (for a readable failure message)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def read_results(workdir) -> dict:
    """results.json with the per-batch arrays (confusion matrices, diagnostics) of the .npz files."""
    return diagnostics.read_results(str(workdir))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """results.json of an uninterrupted CLI run; it runs alongside the tests that need it."""
    base = tmp_path_factory.mktemp("uninterrupted")
    workdir = str(base / "workdir")
    with open(base / "stderr.txt", "w") as stderr:
        proc = start(workdir, stderr)

    def results() -> dict:
        proc.communicate(timeout=600)
        assert proc.returncode == 0, (base / "stderr.txt").read_text()
        return read_results(workdir)

    yield results
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def kill_points() -> list[tuple[str, int]]:
    """(strategy, run) to kill the CLI in: the first strategy's second run (a finished run is in
    the checkpoint) and the last strategy's first run (finished strategies are in it)."""
    points = [(CLI_NAMES[0], NUM_RUNS - 1)]
    if len(CLI_NAMES) > 1:
        points.append((CLI_NAMES[-1], 0))
    return points


def test_sigkilled_cli_resumes_to_identical_results(tmp_path, reference):
    """The CLI is SIGKILLed during a batch (twice, restarted each time); the final results.json
    equals that of an uninterrupted run, accuracies and confusion matrices to the last bit.

    This is also the determinism check across processes: every strategy but the two
    interrupted ones is computed from scratch by a different process than the reference.
    """
    workdir = str(tmp_path / "workdir")
    outputs = []
    for attempt, point in enumerate([*kill_points(), None]):
        stderr_path = tmp_path / f"stderr-{attempt}.txt"
        with open(stderr_path, "w") as stderr:
            proc = start(workdir, stderr)
        if point is None:  # the last start runs to the end
            break
        name, run = point
        target = re.compile(rf"^{re.escape(name)}\s+run {run} batch {KILL_AFTER}/{NUM_BATCHES}: accuracy")
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if target.match(line):  # batch KILL_AFTER is checkpointed; the next one is training
                proc.send_signal(signal.SIGKILL)
                break
        proc.stdout.close()
        proc.wait(timeout=600)
        assert proc.returncode == -signal.SIGKILL, "".join(lines) + stderr_path.read_text()
        outputs.append("".join(lines))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr_path.read_text()
    outputs.append(out)
    # Each restart resumed from a checkpoint and did not redo the batches already checkpointed.
    for (name, run), out in zip(kill_points(), outputs[1:], strict=True):
        runs = rf"(run {run}|runs [\d,]*\b{run}\b[\d,]*)"  # alone, or vmapped with the other runs
        resumed = re.search(rf"^{re.escape(name)} {runs}: resuming after batch (\d+)/{NUM_BATCHES}", out, re.M)
        assert resumed, out
        done = int(resumed.group(2))
        assert done >= KILL_AFTER
        assert not re.search(rf"^{re.escape(name)}\s+run {run} batch [1-{done}]/", out, re.M), out  # nor started
    expected = reference()
    assert expected["strategies"][CLI_NAMES[0]]["runs"][0]["train_seconds"]  # the timings set aside
    resumed = without_timings(read_results(workdir))
    assert resumed == without_timings(expected), differences(resumed, without_timings(expected))[:10]


@pytest.mark.parametrize("name", NAMES)
def test_restored_run_continues_exactly(tmp_path, reference, name):
    """The runs restored from their checkpoint after batch 1 finish with the uninterrupted records:
    - through the program that ran them: it is reused without a new compilation (restored leaves
      have the fresh leaves' shapes, dtypes, weak types and shardings; max_traces=1 checks it);
    - through a freshly built program: nothing the strategy needs lives outside the checkpoint.
    The uninterrupted records also equal the CLI's (determinism: same config, seed, numbers).
    """
    config = tiny_config()
    dataset = load_dataset("digits")
    job = experiment.StrategyJob.build(config, name, dataset)
    job = dataclasses.replace(job, program=dataclasses.replace(job.program, max_traces=1))
    chunk = job.chunks(NUM_RUNS)[0]  # the CLI's first chunk: both runs when vmapped, run 0 alone when not
    scenarios = [build_scenario(config, run, dataset) for run in chunk.runs]
    checkpoints = checkpoint.Checkpoints(str(tmp_path / "checkpoints"))

    def save(progress: experiment.ChunkProgress) -> None:
        payload = {"records": progress.records, "alive": progress.alive.tolist(), "next_batch": progress.next_batch}
        checkpoints.save(progress.next_batch, progress.states, payload)
        checkpoints.keep(progress.next_batch)

    def resume_with(job: experiment.StrategyJob) -> list[dict]:
        fresh = experiment.start_chunk(job, chunk, scenarios)
        saved = checkpoints.progress(1)
        states = checkpoints.restore(1, fresh.states)
        progress = experiment.ChunkProgress(states, saved["records"], np.asarray(saved["alive"]), saved["next_batch"])
        final = experiment.train_chunk(job, chunk, scenarios, progress)
        return [drop_timings(record) for row in final.records for record in row]

    start = experiment.start_chunk(job, chunk, scenarios)
    final = experiment.train_chunk(job, chunk, scenarios, start, on_checkpoint=save)
    uninterrupted = [record for row in final.records for record in row]
    assert all(r["diverged"] is None and len(r["accuracy"]) == NUM_BATCHES for r in uninterrupted)
    expected = json.loads(json.dumps([drop_timings(r) for r in uninterrupted]))  # as the checkpoint's JSON has it
    assert resume_with(job) == expected
    assert resume_with(experiment.StrategyJob.build(config, name, dataset)) == expected
    checkpoints.close()
    if name in CLI_NAMES:
        cli_runs = reference()["strategies"][name]["runs"]
        assert [drop_timings(cli_runs[run]) for run in chunk.runs] == expected


def drop_timings(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "train_seconds"}


def test_a_workdir_of_a_config_without_a_newer_field_resumes_as_its_default(tmp_path, capsys):
    """A config written before a field existed (here ``dense_init``) counts the field as its default:
    the same run resumes; another value of the field is another config."""
    config = tiny_config()
    config.strategies = NAMES[0]
    config.num_runs = 1
    config.num_batches = 1
    assert main.run(config, str(tmp_path)) == 0
    for name in ("config.json", "results.json"):
        path = tmp_path / name
        data = json.loads(path.read_text())
        (data if name == "config.json" else data["config"]).pop("dense_init")
        path.write_text(json.dumps(data))
    capsys.readouterr()
    assert main.run(config, str(tmp_path)) == 0  # resumes: nothing left to train
    assert "batch 1/1:" not in capsys.readouterr().out
    changed = copy.deepcopy(config)
    changed.dense_init = "torch"
    assert main.run(changed, str(tmp_path)) == 2
    assert "dense_init: 'lecun' -> 'torch'" in capsys.readouterr().err


def test_workdir_of_another_config_is_refused(tmp_path, capsys):
    """A different config on a used workdir: exit 2, one line naming the workdir and the way out,
    nothing touched; the same config resumes (nothing left to do); overwrite=True starts again."""
    config = tiny_config()
    config.strategies = NAMES[0]
    config.num_runs = 1
    config.num_batches = 1
    assert main.run(config, str(tmp_path)) == 0
    before = {p: os.path.getmtime(os.path.join(d, p)) for d, _, files in os.walk(tmp_path) for p in files}
    capsys.readouterr()

    changed = copy.deepcopy(config)
    changed.lr = config.lr * 2
    assert main.run(changed, str(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path) in err[0] and "--config.overwrite=True" in err[0] and "lr:" in err[0]
    assert {p: os.path.getmtime(os.path.join(d, p)) for d, _, files in os.walk(tmp_path) for p in files} == before

    assert main.run(config, str(tmp_path)) == 0  # same config: resumes, nothing to train
    assert "batch 1/1:" not in capsys.readouterr().out

    changed.overwrite = True
    changed.strategies = NAMES[-1]
    assert main.run(changed, str(tmp_path)) == 0
    assert "batch 1/1:" in capsys.readouterr().out
    assert read_results(tmp_path)["config"]["lr"] == changed.lr
    # Everything the old config wrote is gone (its per-strategy diagnostics too).
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("diagnostics_")) == [f"diagnostics_{NAMES[-1]}.npz"]
