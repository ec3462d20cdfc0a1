"""Registration: a user module (not part of cljax) registers a strategy, a dataset and a model, and
the command line runs them with ``--import``: results, report, checkpoints and an exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from cljax import diagnostics, registry
from cljax.config import base_config
from cljax.strategies import STRATEGIES, StrategySpec
from cljax.strategies.naive import naive
from tests.conftest import REPO_ROOT
from tests.helpers import without_timings

USER_MODULE = textwrap.dedent(
    '''
    """A user's strategy, dataset and model, registered without editing cljax."""
    import jax.numpy as jnp
    import numpy as np
    import optax

    import cljax
    from cljax.models import MLPBody
    from cljax.scenarios.digits import load_digits


    def decayed(static):
        """Cross-entropy at temperature T, weighted by decay ** (batches trained so far): the
        strategy state (a counter) changes the training, so a resume must restore it."""

        def loss(logits, batch, state, logit_mask):
            del logit_mask
            return optax.softmax_cross_entropy_with_integer_labels(logits / state["t"], batch["y"]) * state["w"]

        def before_batch(state, ctx):
            weight = ctx.hparams["decay"] ** state.strategy_state["seen"]
            strategy_state = {**state.strategy_state, "w": weight, "t": ctx.hparams["temperature"]}
            return state._replace(strategy_state=strategy_state), {}

        def after_batch(state, ctx):
            s = state.strategy_state
            return state._replace(strategy_state={**s, "seen": s["seen"] + 1.0})

        def init(params):
            del params
            return {"seen": jnp.float32(0), "w": jnp.float32(1), "t": jnp.float32(1)}

        return cljax.Strategy(name="decayed", init=init, before_batch=before_batch, after_batch=after_batch, loss=loss)


    cljax.register_strategy(
        "decayed",
        cljax.StrategySpec(
            decayed,
            {
                "decay": cljax.positive(0.5, "loss weight factor per batch trained"),
                "temperature": cljax.positive(2.0, "softmax temperature of the loss"),
            },
            doc="a user strategy (test)",
        ),
    )


    def six_digits(data_dir):
        d = load_digits()
        train, test = d.train_y < 6, d.test_y < 6
        return cljax.Dataset("six_digits", d.train_x[train], d.train_y[train], d.test_x[test], d.test_y[test], 6,
                             x_divisor=d.x_divisor)


    cljax.register_dataset("six_digits", six_digits)
    cljax.register_model("tiny_mlp", lambda config, num_classes: cljax.Classifier(MLPBody((16,)), num_classes))
    '''
)

ARGS = [
    "--import=user_cl",
    "--config.strategies=decayed",
    "--config.dataset=six_digits",
    "--config.model=tiny_mlp",
    "--config.num_runs=1",
    "--config.epochs_first=1",
    "--config.epochs=1",
    "--config.decayed.epochs=1",
    "--config.decayed.decay=0.5,0.9",  # a hyper-grid over the user's own field
]


def start(tmp_path, workdir: str) -> subprocess.Popen:
    (tmp_path / "user_cl.py").write_text(USER_MODULE)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO_ROOT}", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-u", "-m", "cljax.main", *ARGS, f"--workdir={workdir}"]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_user_strategy_dataset_and_model_through_the_cli(tmp_path):
    whole = start(tmp_path, str(tmp_path / "whole"))
    out, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err
    results = diagnostics.read_results(str(tmp_path / "whole"))
    assert list(results["strategies"]) == ["decayed[decay=0.5]", "decayed[decay=0.9]"]
    for entry in results["strategies"].values():
        assert len(entry["runs"][0]["accuracy"]) == 3 and entry["summary"] is not None
    a, b = (e["runs"][0]["loss"] for e in results["strategies"].values())
    assert a[0] == pytest.approx(b[0]) and a[1] != pytest.approx(b[1])  # decay acts from B_2 on
    report = (tmp_path / "whole" / "report" / "report.md").read_text()
    assert "decayed[decay=0.5]" in report
    assert os.listdir(tmp_path / "whole" / "checkpoints")

    # Killed after B_1, then resumed from its checkpoint: the same results (the state was restored).
    workdir = str(tmp_path / "resumed")
    killed = start(tmp_path, workdir)
    for line in killed.stdout:
        if "batch 1/3: accuracy" in line:
            break
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    resumed = start(tmp_path, workdir)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resuming after batch" in out
    assert without_timings(diagnostics.read_results(workdir)) == without_timings(results)


def test_unknown_import_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    cmd = [sys.executable, "-m", "cljax.main", "--import=no_such_module_xyz"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --import=no_such_module_xyz: the module could not be imported: "
        "ModuleNotFoundError: No module named 'no_such_module_xyz'"
    ]


def test_register_refuses_bad_and_taken_names():
    spec = StrategySpec(naive)
    with pytest.raises(ValueError, match="registered already"):
        registry.register_strategy("naive", spec)
    with pytest.raises(ValueError, match="top-level config field"):
        registry.register_strategy("dataset", spec)
    with pytest.raises(ValueError, match="invalid"):
        registry.register_model("Bad-Name", lambda config, n: None)
    with pytest.raises(TypeError, match="StrategySpec"):
        registry.register_strategy("mine", naive)


def test_registered_strategy_gets_a_config_section():
    registry.register_strategy("naive_copy", StrategySpec(naive))
    try:
        assert "naive_copy" in base_config()
        assert json.dumps(base_config().naive_copy.to_dict())
    finally:
        del STRATEGIES["naive_copy"]
