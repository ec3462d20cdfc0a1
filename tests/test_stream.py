"""Runs as a pure function: vmapped runs equal sequential runs, grid points equal separate
configs, the frozen-body feature cache equals the masked full fit, one member's divergence
leaves the others alone, and nothing recompiles between batches."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from cljax import engine, experiment
from cljax.config import base_config
from cljax.scenarios import build_scenario, load_dataset
from cljax.strategies import STRATEGIES

NUM_RUNS = 2


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def short_config(strategy: str, **overrides):
    """Split digits, 3 batches, a 16-unit MLP, one epoch per batch, momentum (optimizer state matters)."""
    config = base_config()
    config.strategies = strategy
    config.hidden_sizes = (16,)
    config.num_runs = NUM_RUNS
    config.num_batches = 3
    config.momentum = 0.9
    config.epochs_first = config.epochs = 1
    config[strategy].epochs_first = config[strategy].epochs = None
    for field, value in overrides.items():
        *path, last = field.split(".")
        node = config
        for part in path:
            node = node[part]
        node[last] = value
    return config


def train(config, name: str, dataset, chunk: experiment.Chunk, **program_changes):
    """The chunk's final records and its states after the first batch ([R, G] stacks)."""
    job = experiment.StrategyJob.build(config, name, dataset)
    job = dataclasses.replace(job, program=dataclasses.replace(job.program, max_traces=1, **program_changes))
    scenarios = [build_scenario(config, run, dataset) for run in chunk.runs]
    after_first = []

    def keep_first(progress: experiment.ChunkProgress) -> None:
        if progress.next_batch == 1:
            after_first.append(jax.device_get(progress.states))

    start = experiment.start_chunk(job, chunk, scenarios)
    final = experiment.train_chunk(job, chunk, scenarios, start, on_checkpoint=keep_first)
    return final.records, after_first[0]


def assert_params_close(a, b, rtol: float = 1e-4) -> None:
    """Relative agreement leaf by leaf (the tolerance scaled by each leaf's magnitude)."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        scale = max(float(np.abs(y).max()), 1e-6)
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_vmapped_runs_equal_sequential_runs(digits, name):
    """Both runs in one vmapped program vs each run alone: parameters after B_1 agree to 1e-4
    (relative) and the final accuracies of a 3-batch stream within 0.01; no program compiles
    twice (max_traces=1)."""
    config = short_config(name)
    together, first_together = train(config, name, digits, experiment.Chunk(tuple(range(NUM_RUNS)), (0,)))
    for run in range(NUM_RUNS):
        (alone,), first_alone = train(config, name, digits, experiment.Chunk((run,), (0,)))
        assert_params_close(
            engine.unstack_member(first_together, run).params, engine.unstack_member(first_alone).params
        )
        record = together[run][0]
        assert record["diverged"] is None and alone[0]["diverged"] is None
        assert abs(record["accuracy"][-1] - alone[0]["accuracy"][-1]) <= 0.01, (
            record["accuracy"],
            alone[0]["accuracy"],
        )


def test_grid_points_equal_separate_configs(digits, tmp_path):
    """A hyper-grid over EWC's λ and the B_i>1 learning rate, trained as one program, records every
    point with the numbers of the same values given as plain config fields."""
    config = short_config("ewc", num_runs=1, grid="ewc.strength=1e2,1e4; ewc.lr=0.01,0.02")
    results = experiment.run_experiment(config, str(tmp_path / "grid"), log=lambda e: None, show_progress=False)
    entries = results["strategies"]
    assert list(entries) == [
        "ewc[strength=100,lr=0.01]",
        "ewc[strength=100,lr=0.02]",
        "ewc[strength=10000,lr=0.01]",
        "ewc[strength=10000,lr=0.02]",
    ]
    point = entries["ewc[strength=10000,lr=0.02]"]
    assert point["strategy"] == "ewc" and point["hparams"] == {"strength": 1e4, "lr": 0.02}
    single = short_config("ewc", num_runs=1, **{"ewc.strength": 1e4, "ewc.lr": 0.02})
    alone = experiment.run_experiment(single, str(tmp_path / "one"), log=lambda e: None, show_progress=False)
    got, want = point["runs"][0], alone["strategies"]["ewc"]["runs"][0]
    np.testing.assert_allclose(got["accuracy"], want["accuracy"], atol=0.01)
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-3)
    # The grid points differ: λ and η reach the compiled program as values.
    finals = {name: entry["runs"][0]["loss"][-1] for name, entry in entries.items()}
    assert len(set(finals.values())) == 4, finals
    # report.md has a table for the grid: a row per point, its values in the first columns.
    markdown = (tmp_path / "grid" / "report" / "report.md").read_text()
    table = markdown.split("### Grid: ewc")[1].split("\n\n")[1].splitlines()
    assert table[0].startswith("| strength | lr | complete runs | final accuracy")
    assert [row.split(" | ")[:2] for row in table[2:]] == [
        ["| 100", "0.01"],
        ["| 100", "0.02"],
        ["| 10000", "0.01"],
        ["| 10000", "0.02"],
    ]


@pytest.mark.parametrize("name", ["cwr", "cwr_plus"])
def test_frozen_body_feature_cache_equals_the_masked_full_fit(digits, name):
    """After B_1, CWR/CWR+ train the head on penultimate features computed once; the same batches
    run as a full fit with Θ̄ masked (transforms.freeze_body) give the same parameters."""
    config = short_config(name, num_runs=1)
    chunk = experiment.Chunk((0,), (0,))
    cached, _ = train(config, name, digits, chunk, feature_cache=True)
    masked, _ = train(config, name, digits, chunk, feature_cache=False)
    for a, b in zip(cached[0][0]["accuracy"], masked[0][0]["accuracy"], strict=True):
        assert abs(a - b) <= 1e-3
    np.testing.assert_allclose(cached[0][0]["loss"], masked[0][0]["loss"], rtol=1e-4)
    np.testing.assert_allclose(
        cached[0][0]["diagnostics"]["weight_change"], masked[0][0]["diagnostics"]["weight_change"], rtol=1e-4, atol=1e-9
    )


def test_the_feature_cache_is_used_only_where_it_changes_nothing():
    """auto: a body with dropout (CifarNet) computes different features in training mode, so its
    frozen batches run the masked full fit; the MLP's features are the same in both modes."""
    from cljax.models import CifarNetBody, Classifier, MLPBody

    assert experiment.feature_cache_allowed("auto", Classifier(MLPBody((8,)), 3), (8, 8, 1))
    assert not experiment.feature_cache_allowed("auto", Classifier(CifarNetBody(), 3), (32, 32, 3))
    assert experiment.feature_cache_allowed("on", Classifier(CifarNetBody(), 3), (32, 32, 3))


class DropoutMLPBody(nn.Module):
    """One 16-unit ReLU layer followed by dropout: dropout above the feature-cache point."""

    rate: float

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.relu(nn.Dense(16, name="fc1")(x.reshape((x.shape[0], -1))))
        return nn.Dropout(self.rate, deterministic=not train)(h)


def test_head_only_fit_keeps_dropout_active_in_the_frozen_body(digits, name="cwr_plus"):
    """With dropout in the body, the default (feature_cache=auto) head-only fit after B_1 is the
    full fit in training mode (dropout active in the frozen layers, as B_1's head trained); the
    explicit feature_cache=on trains on inference-mode features instead and gets other numbers.
    The same body with dropout rate 0 gives the same numbers either way. (CWR and CWR+ share this
    path: ``StreamProgram.fit``.)"""
    from cljax.models import Classifier

    config = short_config(name, num_runs=1)
    chunk = experiment.Chunk((0,), (0,))
    for rate in (0.5, 0.0):
        model = Classifier(DropoutMLPBody(rate), digits.num_classes)
        auto = experiment.feature_cache_allowed("auto", model, digits.input_shape)
        assert auto == (rate == 0.0)
        default, _ = train(config, name, digits, chunk, model=model, feature_cache=auto)
        cached, _ = train(config, name, digits, chunk, model=model, feature_cache=True)
        default_loss, cached_loss = default[0][0]["loss"], cached[0][0]["loss"]
        np.testing.assert_allclose(default_loss[0], cached_loss[0], rtol=1e-5)  # B_1: the same full fit
        if rate:
            assert all(abs(a - b) > 1e-4 for a, b in zip(default_loss[1:], cached_loss[1:], strict=True))
        else:
            np.testing.assert_allclose(default_loss, cached_loss, rtol=1e-4)


def test_one_diverging_member_is_recorded_while_the_others_finish(digits, tmp_path):
    """Two grid points x two runs in one program; the point with an absurd learning rate diverges
    in B_2 (both its runs), the other point's runs finish all batches."""
    config = short_config("naive", grid="naive.lr=0.05,1e30")
    results = experiment.run_experiment(config, str(tmp_path), log=lambda e: None, show_progress=False)
    good, bad = results["strategies"]["naive[lr=0.05]"], results["strategies"]["naive[lr=1e+30]"]
    for record in good["runs"]:
        assert record["diverged"] is None and len(record["accuracy"]) == 3
    for record in bad["runs"]:
        assert record["diverged"]["batch"] == 1 and record["diverged"]["reason"] == "loss or gradient not finite"
        assert len(record["accuracy"]) == 1
    assert good["summary"] is not None and bad["summary"] is None


def test_host_step_loop_stream_equals_device_step_loop(digits):
    """The stream's stages composed on the host (step_loop=host) give the device program's numbers."""
    config = short_config("ar1", num_runs=1)
    chunk = experiment.Chunk((0,), (0,))
    device, first_device = train(config, "ar1", digits, chunk, loop="device")
    host, first_host = train(config, "ar1", digits, chunk, loop="host")
    assert_params_close(first_host.params, first_device.params, rtol=1e-5)
    np.testing.assert_allclose(host[0][0]["accuracy"], device[0][0]["accuracy"], atol=0.01)


def test_stored_uint8_images_train_exactly_as_the_float_images(digits):
    """Images stay uint8 on the host and the device (the loader's dtype) and become floats inside
    the compiled programs through a 256-entry table whose entries are the old loaders' floats
    (x / 16 for digits): a stream trained on the stored images equals, bit for bit, the same stream
    on a float32 copy of the dataset."""
    assert digits.train_x.dtype == np.uint8 and digits.x_divisor == 16.0
    as_floats = dataclasses.replace(
        digits,
        train_x=digits.train_x.astype(np.float32) / np.float32(16),
        test_x=digits.test_x.astype(np.float32) / np.float32(16),
        x_divisor=1.0,
    )
    config = short_config("ewc")  # a Fisher pass and a penalty besides the fit
    chunk = experiment.Chunk(tuple(range(NUM_RUNS)), (0,))
    (stored, _), (floats, _) = (train(config, "ewc", data, chunk) for data in (digits, as_floats))
    for a, b in zip(stored, floats, strict=True):
        assert a[0]["accuracy"] == b[0]["accuracy"] and a[0]["loss"] == b[0]["loss"]


def test_vmap_runs_auto_on_cpu_follows_the_measured_choice():
    """auto on CPU: vmapped for the default job's small MLP (3 runs), one run at a time for
    Fashion-MNIST's MLP 400-400 with 10 runs (a 19 MB stack) and for convolutional models."""
    from cljax.models import CifarNetBody, Classifier, MLPBody

    assert jax.default_backend() == "cpu"
    mlp = Classifier(MLPBody((400, 400)), num_classes=10)
    assert experiment.use_vmap("auto", mlp, (8, 8, 1), 3)
    assert not experiment.use_vmap("auto", mlp, (28, 28, 1), 10 * jax.device_count())
    assert experiment.use_vmap("true", mlp, (28, 28, 1), 10)
    assert not experiment.use_vmap("false", mlp, (8, 8, 1), 3)
    assert not experiment.use_vmap("auto", Classifier(CifarNetBody(), num_classes=10), (32, 32, 3), 2)
