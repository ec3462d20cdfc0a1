"""Divergence guard: a run whose loss, gradient or parameters turn non-finite stops with a message
naming strategy, run, batch and step; its last good checkpoint is kept; results.json records it;
the other runs and strategies go on."""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import checkpoint, diagnostics, engine, experiment
from cljax.config import base_config
from cljax.strategies import STRATEGIES, Strategy, StrategySpec

POISONED_CLASSES = (2, 3)  # B_2 of run 0 (natural class order); run 1's order puts other classes there


def poison(hparams=None) -> Strategy:
    """Naive, except that after the batch of classes 2 and 3 its hook leaves a NaN in the weights."""
    del hparams

    def after_batch(state: engine.TrainState, ctx) -> engine.TrainState:
        poisoned = jnp.zeros_like(ctx.classes).at[jnp.asarray(POISONED_CLASSES)].set(True)
        hit = jnp.array_equal(ctx.classes, poisoned)
        nan_first = lambda x: jnp.where(hit, x.at[(0,) * x.ndim].set(jnp.nan), x)
        return state._replace(params=jax.tree.map(nan_first, state.params))

    return Strategy(name="poison", after_batch=after_batch)


@pytest.fixture
def config(monkeypatch):
    monkeypatch.setitem(STRATEGIES, "poison", StrategySpec(poison))
    c = base_config()
    c.hidden_sizes = (16,)
    c.strategies = "naive,poison,cumulative"
    c.num_runs = 2
    c.num_batches = 3
    c.epochs_first = c.epochs = 1
    c.cumulative.epochs = 1
    c.naive.lr = 1e30  # B_1 trains at lr_first; from B_2 on, SGD blows up within a few steps
    return c


def test_diverged_runs_stop_are_recorded_and_keep_their_last_good_checkpoint(tmp_path, config, capsys):
    workdir = str(tmp_path)
    results = experiment.run_experiment(config, workdir)
    out = capsys.readouterr().out
    saved = diagnostics.read_results(workdir)  # results.json + the per-batch arrays of the .npz files
    assert saved == json.loads(json.dumps(results))
    naive, poisoned, cumulative = (saved["strategies"][n] for n in ("naive", "poison", "cumulative"))

    # Loss/gradient divergence inside fit: both naive runs stop at the first bad step.
    for run, record in enumerate(naive["runs"]):
        diverged = record["diverged"]
        batch, step = diverged["batch"], diverged["step"]
        assert batch >= 1 and step >= 0 and diverged["reason"] == "loss or gradient not finite"
        assert len(record["accuracy"]) == batch  # the diverged batch is not evaluated
        assert re.search(rf"^naive run {run} diverged in batch {batch + 1}/3 at step {step} ", out, re.M), out
        assert_kept(workdir, diverged, "naive", run, out)
    assert naive["summary"] is None  # no complete run to summarize

    # Non-finite parameters after the strategy's after_batch hook: run 0 stops, run 1 completes.
    diverged = poisoned["runs"][0]["diverged"]
    assert diverged["batch"] == 1 and diverged["step"] is None and "after_batch" in diverged["reason"]
    assert re.search(r"^poison run 0 diverged in batch 2/3 \(parameters not finite", out, re.M), out
    assert_kept(workdir, diverged, "poison", 0, out)
    assert poisoned["runs"][1]["diverged"] is None and len(poisoned["runs"][1]["accuracy"]) == 3
    assert poisoned["summary"]["final_accuracy_mean"] == poisoned["runs"][1]["accuracy"][-1]

    # The other strategy is untouched.
    assert all(r["diverged"] is None and len(r["accuracy"]) == 3 for r in cumulative["runs"])

    # Resuming the finished workdir trains nothing and changes nothing; kept checkpoints stay.
    again = experiment.run_experiment(config, workdir)
    assert "batch" not in capsys.readouterr().out.replace("resuming after batch", "")
    assert json.loads(json.dumps(again)) == saved
    for entry in saved["strategies"].values():
        for record in entry["runs"]:
            if record["diverged"]:
                assert os.path.isdir(os.path.join(workdir, record["diverged"]["checkpoint"]))


def assert_kept(workdir: str, diverged: dict, name: str, run: int, out: str) -> None:
    """The checkpoint after the batch before the bad one is still there (not rotated away by the
    later strategies' checkpoints), holds that batch, and the message names it."""
    step = diverged["checkpoint_step"]
    assert diverged["checkpoint"] == os.path.join("checkpoints", str(step))
    path = os.path.join(workdir, diverged["checkpoint"])
    assert f"last good checkpoint (after batch {diverged['batch']}): {os.path.abspath(path)}" in out
    checkpoints = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), writable=False)
    progress = checkpoints.progress(step)
    checkpoints.close()
    assert progress["batch"] == diverged["batch"] - 1
    records = [record for row in progress["records"] for record in row if record["run"] == run]
    assert len(records) == 1 and records[0]["diverged"] is None  # the state saved before the bad batch
    assert np.isfinite(records[0]["accuracy"]).all() and len(records[0]["accuracy"]) == diverged["batch"]
    assert step < checkpoints_newest(workdir) - checkpoint.MAX_TO_KEEP  # kept beyond the rotation


def checkpoints_newest(workdir: str) -> int:
    return max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def test_tree_all_finite():
    tree = {"w": jnp.ones(3), "count": jnp.int32(7), "b": jnp.zeros((2, 2))}
    assert bool(engine.tree_all_finite(tree))
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        assert not bool(engine.tree_all_finite({**tree, "b": tree["b"].at[1, 0].set(bad)}))
    assert bool(engine.tree_all_finite({}))
