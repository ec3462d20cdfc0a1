"""The command line end to end: results.json shape, and bad input as one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

TINY = [
    "--config.strategies=naive,cumulative",
    "--config.num_runs=2",
    "--config.hidden_sizes=(32,)",
    "--config.epochs_first=1",
    "--config.epochs=1",
    "--config.cumulative.epochs=2",
]


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cljax.main", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def test_cli_writes_valid_results_json(tmp_path):
    workdir = tmp_path / "w"
    proc = run_cli("--config=configs/default.py", f"--workdir={workdir}", *TINY)
    assert proc.returncode == 0, proc.stderr
    progress = [line for line in proc.stdout.splitlines() if " batch " in line and "accuracy" in line]
    assert len(progress) == 2 * 2 * 5  # strategies x runs x batches
    assert "final accuracy" in proc.stdout  # the comparison table
    results = json.loads((workdir / "results.json").read_text())
    assert results["config"]["num_runs"] == 2 and results["config"]["strategies"] == "naive,cumulative"
    assert list(results["strategies"]) == ["naive", "cumulative"]
    for entry in results["strategies"].values():
        assert [r["run"] for r in entry["runs"]] == [0, 1]
        for run in entry["runs"]:
            assert sorted(run["class_order"]) == list(range(10))
            assert [c for b in run["batch_classes"] for c in b] == run["class_order"]
            for key in ("accuracy", "seen_accuracy", "train_seconds", "train_examples"):
                assert len(run[key]) == 5
            assert all(0.0 <= a <= 1.0 for a in run["accuracy"] + run["seen_accuracy"])
            matrix = run["accuracy_matrix"]
            assert len(matrix) == 5 and all(len(row) == 5 for row in matrix)
        summary = entry["summary"]
        for key in (
            "final_accuracy_mean",
            "final_accuracy_std",
            "average_accuracy_mean",
            "forgetting_mean",
            "bwt_mean",
        ):
            assert isinstance(summary[key], float)
    # Run 0 uses the natural class order, run 1 another.
    runs = results["strategies"]["naive"]["runs"]
    assert runs[0]["class_order"] == list(range(10)) and runs[1]["class_order"] != list(range(10))
    assert not [p for p in os.listdir(workdir) if p.startswith(".tmp")]  # atomic write left nothing behind


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("--config.lr=-0.1", "lr=-0.1 is invalid"),
        ("--config.strategies=naive,magic", "'magic' is unknown; allowed:"),
        ("--config.nosuchfield=1", "--config.nosuchfield"),
        ("--config.classes_per_batch=3", "classes_per_batch"),
    ],
)
def test_cli_bad_field_gives_one_clear_line(tmp_path, flag, expected):
    workdir = tmp_path / "w"
    proc = run_cli(f"--workdir={workdir}", flag)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
    assert not workdir.exists()  # nothing written before validation passes
