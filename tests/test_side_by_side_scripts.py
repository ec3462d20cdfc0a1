"""The side-by-side speed scripts: benchmark_revision.py (a strategy as a git revision had it, registered
beside today's) and avalanche_reference.py (cljax's seconds beside Avalanche's)."""

from __future__ import annotations

import importlib.util
import os
import types

import pytest

from cljax.strategies import STRATEGIES, StreamShape, make_strategy
from tests.conftest import REPO_ROOT


def load_script():
    spec = importlib.util.spec_from_file_location(
        "benchmark_revision", os.path.join(REPO_ROOT, "scripts", "benchmark_revision.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_earlier_version_is_registered_under_its_own_name():
    script = load_script()
    name = script.register_before("HEAD", "rehe")
    try:
        assert name == "rehe_before" and STRATEGIES[name] is not STRATEGIES["rehe"]
        stream = StreamShape((3,), "uint8", 4, 2, largest={"memory_size": 10.0})
        strategy = make_strategy(name, {"memory_size": 10.0}, stream=stream)
        assert strategy.name == name and strategy.gradients is not None  # HEAD's REHE: replay in each step
        module = script.module_at_revision("HEAD", "cljax/strategies/rehe.py", "rehe_at_head")
        assert set(module.HPARAMS) == set(STRATEGIES["rehe"].hparams)
    finally:
        STRATEGIES.pop("rehe_before", None)


def test_an_unknown_revision_is_one_clear_error():
    with pytest.raises(SystemExit, match="git show no-such-revision:cljax/strategies/rehe.py failed"):
        load_script().module_at_revision("no-such-revision", "cljax/strategies/rehe.py", "x")


def test_the_avalanche_reference_reads_cljax_seconds_from_one_benchmark_round(monkeypatch):
    """scripts/avalanche_reference.py (it needs Avalanche, which CI does not install) takes cljax's
    side from ``benchmark_strategies.py --repeats=1``: its "round 1:" line, strategy by strategy."""
    spec = importlib.util.spec_from_file_location(
        "avalanche_reference", os.path.join(REPO_ROOT, "scripts", "avalanche_reference.py")
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = "naive first run (compiles) 6.2 s\nround 1: naive 2.05, rehe 3.61, gem 7.03, icarl 3.57, limit 1.64\n"
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        return types.SimpleNamespace(stdout=out)

    monkeypatch.setattr(script.subprocess, "run", fake_run)
    got = script.cljax_round("python3", "")
    assert got == {"naive": 2.05, "rehe": 3.61, "gem": 7.03, "icarl": 3.57, "limit": 1.64}
    assert "--strategies=naive,rehe,gem,icarl" in commands[0] and "--repeats=1" in commands[0]
