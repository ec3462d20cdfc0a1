"""The command line as a new user meets it: the packaged default config, --list, unknown fields
with the closest names, and the printed comparison table."""

from __future__ import annotations

import os
import subprocess
import sys

from cljax import cli
from cljax.config import base_config
from cljax.configs import DEFAULT_CONFIG
from cljax.experiment import comparison_table
from tests.conftest import REPO_ROOT


def cli_run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """The command from a directory outside the repository (as after ``pip install``)."""
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "cljax.main", *args]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)


def test_default_config_is_packaged_and_the_top_level_one_is_the_same():
    assert os.path.dirname(DEFAULT_CONFIG) == os.path.join(REPO_ROOT, "cljax", "configs")
    sys.path.insert(0, os.path.join(REPO_ROOT, "configs"))
    try:
        import default as top_level  # configs/default.py
    finally:
        sys.path.pop(0)
    assert top_level.get_config().to_dict() == base_config().to_dict()


def test_list_works_outside_the_repository(tmp_path):
    proc = cli_run(tmp_path, "--list")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for name in ("naive", "ar1", "digits", "core50", "mlp", "googlenet"):
        assert name in out
    assert "  ewc.strength = " in out
    assert "  num_runs = 3" in out and "  dataset = 'digits'" in out


def test_unknown_field_names_the_closest_fields(tmp_path):
    proc = cli_run(tmp_path, "--config.ewc.strenght=1e4")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "error: --config.ewc.strenght: the config has no field 'ewc.strenght'; "
        "did you mean ewc.strength or si.strength or ar1.strength?"
    ]


def test_unknown_field_message_without_close_names():
    message = cli.unknown_field_message(["--config.zzzzzz=1"], AttributeError("'zzzzzz'"), base_config())
    assert message == "--config.zzzzzz: the config has no field 'zzzzzz'; python -m cljax.main --list shows every field"


def summary(runs: int) -> dict:
    return {
        "final_accuracy_mean": 0.5,
        "final_accuracy_std": 0.0 if runs == 1 else 0.01,
        "average_accuracy_mean": 0.7,
        "forgetting_mean": 0.2,
        "bwt_mean": -0.1,
        "final_accuracy_per_run": [0.5] * runs,
    }


def test_table_has_a_legend_and_no_spread_for_one_run():
    one = comparison_table({"strategies": {"naive": {"summary": summary(1)}}}).splitlines()
    assert "±" not in "\n".join(one)
    assert one[1].split() == ["naive", "0.500", "0.700", "0.200", "-0.100"]
    assert one[-1].startswith("final accuracy: after the last batch") and "(1 run)" in one[-1]
    three = comparison_table({"strategies": {"naive": {"summary": summary(3)}}}).splitlines()
    assert "0.500 ± 0.010" in three[1] and "mean ± std over 3 runs" in three[-1]
