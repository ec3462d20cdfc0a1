"""A strategy as an earlier revision had it, timed side by side with today's in one process.

    python3 scripts/benchmark_revision.py aebade6 icarl --strategies=naive,icarl_before,icarl --phases --repeats=3
    python3 scripts/benchmark_revision.py ded4685 rehe --strategies=naive,rehe_before,rehe --repeats=5

Reads ``cljax/strategies/<strategy>.py`` as it was at REVISION (``git show``), registers its
``SPEC`` as ``<strategy>_before`` and runs ``scripts/benchmark_strategies.py`` with the remaining
arguments. Only the strategy's own file comes from the revision: the engine, the data and the
other modules it imports are today's, so the comparison isolates the strategy's change (an engine
change is compared with ``scripts/compare_default_job.sh``). The machine's load moves both alike,
which is why the two run in one process (BUILD_NOTES.md records the outputs).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import runpy
import subprocess
import sys
import tempfile
from types import ModuleType

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEFORE = "_before"  # the suffix of the earlier version's strategy name


def module_at_revision(revision: str, path: str, name: str) -> ModuleType:
    """The module at ``path`` (relative to the repository) as it was at ``revision``, imported as ``name``."""
    try:
        source = subprocess.run(
            ["git", "-C", REPO, "show", f"{revision}:{path}"], capture_output=True, text=True, check=True
        ).stdout
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"git show {revision}:{path} failed: {e.stderr.strip()}") from e
    with tempfile.TemporaryDirectory() as scratch:
        file = os.path.join(scratch, f"{name}.py")
        with open(file, "w") as f:
            f.write(source)
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def register_before(revision: str, strategy: str) -> str:
    """Registers ``strategy`` as it was at ``revision`` under ``<strategy>_before``; returns that name."""
    from cljax.registry import register_strategy

    name = strategy + BEFORE
    spec = module_at_revision(revision, f"cljax/strategies/{strategy}.py", name).SPEC

    def factory(hparams):
        return dataclasses.replace(spec.factory(hparams), name=name)

    register_strategy(name, dataclasses.replace(spec, factory=factory))
    return name


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1].startswith("-") or sys.argv[2].startswith("-"):
        raise SystemExit(f"usage: {sys.argv[0]} REVISION STRATEGY [benchmark_strategies.py flags...]")
    revision, strategy, *flags = sys.argv[1:]
    register_before(revision, strategy)
    script = os.path.join(REPO, "scripts", "benchmark_strategies.py")
    sys.argv = [script, *flags]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
