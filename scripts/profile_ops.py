"""Which compiled ops take a job's time: a script run under JAX's profiler, op time summed by op name.

    PYTHONPATH=. python scripts/profile_ops.py scripts/benchmark_strategies.py --strategies=gem --repeats=1
    PYTHONPATH=. python scripts/profile_ops.py --top=30 scripts/benchmark_runs.py --modes=vmapped --runs=10

Runs the script with its own flags (everything after the script's path) inside
``jax.profiler.trace``, reads the trace back with ``jax.profiler.ProfileData`` and prints the ops
(XLA fusions, dots, copies: their names in the compiled HLO, and the program's) with the most
time: seconds, calls, and share of all op time. Op time is summed over the threads that run ops,
so it can exceed the wall time. Find an op in the compiled program with
``jax.jit(f).lower(...).compile().as_text()``.

This is how GEM's raveled gradients, SI's extra loop fusions and herding's memory-bound dot
were found (BUILD_NOTES.md, "Where GEM's step time goes"); timings stay in the benchmarks.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import runpy
import sys
import tempfile

import jax


def op_times(trace_dir: str) -> dict[tuple[str, str], tuple[int, int]]:
    """{(program, op name): (total nanoseconds, calls)} over the op events of the newest trace in
    ``trace_dir``: the events the runtime tags with an ``hlo_op`` (on whatever thread runs them)."""
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not paths:
        raise FileNotFoundError(f"no profiler trace (*.xplane.pb) under {trace_dir}")
    total: collections.Counter[tuple[str, str]] = collections.Counter()
    calls: collections.Counter[tuple[str, str]] = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(paths[-1]).planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" in stats:
                    key = (str(stats.get("hlo_module", "")), str(stats["hlo_op"]))
                    total[key] += int(event.duration_ns)
                    calls[key] += 1
    return {key: (total[key], calls[key]) for key in total}


def report(times: dict[tuple[str, str], tuple[int, int]], top: int) -> str:
    """The ``top`` ops by total time, one line each."""
    everything = sum(ns for ns, _ in times.values()) or 1
    ranked = sorted(times.items(), key=lambda item: -item[1][0])[:top]
    lines = [f"op time {everything / 1e9:.3f} s in {len(times)} ops; the {len(ranked)} longest:"]
    for (program, op), (ns, count) in ranked:
        lines.append(f"{ns / 1e9:9.3f} s {count:8d} calls {100 * ns / everything:5.1f}%  {op}  ({program})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=20, help="ops to print")
    parser.add_argument("--trace_dir", default="", help="keep the trace here ('' = a temporary directory)")
    parser.add_argument("script", help="the Python script to run under the profiler")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")
    options = parser.parse_args()
    if not os.path.isfile(options.script):
        parser.error(f"script {options.script!r} is not a file")
    with tempfile.TemporaryDirectory() as scratch:
        trace_dir = options.trace_dir or scratch
        sys.argv = [options.script, *options.args]
        with jax.profiler.trace(trace_dir):
            try:
                runpy.run_path(options.script, run_name="__main__")
            except SystemExit as e:  # absl's app.run ends with sys.exit
                if e.code not in (None, 0):
                    raise
        print(report(op_times(trace_dir), options.top))


if __name__ == "__main__":
    main()
