"""Report drawing time: this checkout's ``cljax.report`` against another git revision's, in one process.

    python scripts/benchmark_report.py --workdir=runs/default --baseline=main --repeats=3

``--workdir`` is a finished job (results.json and the diagnostics files). Each repeat writes the report
of both versions into fresh temporary copies of the workdir (the inputs linked, never modified), in
alternating order; the baseline is ``cljax/report.py`` at revision ``--baseline`` loaded under another
module name (the rest of cljax is this checkout's). Prints the median seconds of each version, the
ratio, and this version's seconds per picture.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from cljax import diagnostics, report  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "A finished job's workdir.")
_BASELINE = flags.DEFINE_string("baseline", "main", "Git revision whose cljax/report.py is the baseline.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Reports drawn per version.")


def load_baseline(revision: str, directory: str):
    source = subprocess.run(
        ["git", "show", f"{revision}:cljax/report.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = os.path.join(directory, "report_baseline.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("report_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def linked_copy(workdir: str, directory: str) -> str:
    """A fresh directory whose results.json and diagnostics files link to the workdir's."""
    copy = tempfile.mkdtemp(dir=directory)
    for name in os.listdir(workdir):
        if name == "results.json" or name.startswith("diagnostics_"):
            os.symlink(os.path.abspath(os.path.join(workdir, name)), os.path.join(copy, name))
    return copy


def seconds(module, workdir: str, directory: str) -> float:
    copy = linked_copy(workdir, directory)
    start = time.perf_counter()
    module.write_report(copy)
    return time.perf_counter() - start


def main(argv: list[str]) -> None:
    del argv
    with tempfile.TemporaryDirectory() as directory:
        baseline = load_baseline(_BASELINE.value, directory)
        versions = {f"baseline ({_BASELINE.value})": baseline, "this checkout": report}
        seconds(report, _WORKDIR.value, directory)  # warm-up: matplotlib's font cache and imports
        times: dict[str, list[float]] = {name: [] for name in versions}
        for k in range(_REPEATS.value):
            order = list(versions) if k % 2 == 0 else list(reversed(versions))
            for name in order:
                times[name].append(seconds(versions[name], _WORKDIR.value, directory))
        medians = {name: float(np.median(t)) for name, t in times.items()}
        for name, median in medians.items():
            print(f"{name}: {median:.2f} s (median of {_REPEATS.value}: {', '.join(f'{t:.2f}' for t in times[name])})")
        base, new = medians.values()
        print(f"speed-up: {base / new:.1f}x")
        results = diagnostics.read_results(_WORKDIR.value)
        out = tempfile.mkdtemp(dir=directory)
        for draw in (
            report.accuracy_figure,
            report.accuracy_matrix_figure,
            report.confusion_figure,
            report.weight_change_figure,
            report.importance_figure,
        ):
            start = time.perf_counter()
            report.save_figure(draw(results), os.path.join(out, "picture.png"))
            print(f"  {draw.__name__} (drawn and saved): {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    app.run(main)
