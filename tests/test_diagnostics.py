"""Per-batch diagnostics (section 5): weight change, importance histograms, compact storage."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import diagnostics


def random_params(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "params": {
            "body": {"fc1": {"kernel": rng.normal(size=(6, 5)).astype(np.float32), "bias": np.zeros(5, np.float32)}},
            "head": {
                "kernel": rng.normal(size=(5, 3)).astype(np.float32),
                "bias": rng.normal(size=3).astype(np.float32),
            },
        }
    }


def test_weight_change_matches_numpy_per_leaf():
    before, after = random_params(0), random_params(1)
    change = np.asarray(diagnostics.mean_abs_change(before, after))
    names = diagnostics.leaf_paths(after)
    assert names == ["body/fc1/bias", "body/fc1/kernel", "head/bias", "head/kernel"]
    for path, value in zip(names, change, strict=True):
        node_a, node_b = after["params"], before["params"]
        for part in path.split("/"):
            node_a, node_b = node_a[part], node_b[part]
        expected = np.mean(np.abs(node_a.astype(np.float64) - node_b.astype(np.float64)))
        np.testing.assert_allclose(value, expected, rtol=1e-6)
    assert change[0] == 0.0


def test_weight_change_of_identical_params_is_zero():
    params = random_params(3)
    assert set(np.asarray(diagnostics.mean_abs_change(params, params)).tolist()) == {0.0}


def numpy_histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Reference: np.histogram between the edges, plus below-first and at-or-above-last cells."""
    values = values.astype(np.float32).astype(np.float64)
    edges32 = edges.astype(np.float32).astype(np.float64)  # the device compares in float32
    inside, _ = np.histogram(values[(values >= edges32[0]) & (values < edges32[-1])], bins=edges32)
    return np.concatenate([[np.sum(values < edges32[0])], inside, [np.sum(values >= edges32[-1])]])


def synthetic_importance(seed: int = 0, max_f: float = 1e-3) -> dict[str, Any]:
    """A made-up importance dict as EWC/SI would return (log-uniform values, some zeros, some huge)."""
    rng = np.random.default_rng(seed)
    f = {
        "body": {"w": 10.0 ** rng.uniform(-18, 7, size=(40, 30))},
        "head": {"w": 10.0 ** rng.uniform(-8, 1, size=(30, 10)), "b": np.zeros(10)},
    }
    f = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), f)
    return {"F": f, "F_hat": jax.tree.map(lambda a: jnp.minimum(a, max_f), f), "max_f": max_f}


def test_importance_histogram_matches_numpy():
    imp = synthetic_importance()
    values = np.concatenate([np.asarray(leaf).ravel() for leaf in jax.tree.leaves(imp["F"])])
    counts = np.asarray(jax.jit(diagnostics.log_histogram)(imp["F"]))
    edges = diagnostics.IMPORTANCE_BIN_EDGES
    assert counts.shape == (len(edges) + 1,)
    np.testing.assert_array_equal(counts, numpy_histogram(values, edges))
    assert counts.sum() == values.size
    assert counts[0] >= 10  # the zero biases and the values below 1e-15
    assert counts[-1] > 0  # values above 1e5


def test_saturated_share_matches_numpy():
    imp = synthetic_importance(seed=1, max_f=1e-3)
    share = float(diagnostics.saturated_share(imp["F_hat"], jnp.float32(1e-3)))
    f_hat = np.concatenate([np.asarray(leaf).ravel() for leaf in jax.tree.leaves(imp["F_hat"])])
    assert share == pytest.approx(np.mean(f_hat >= np.float32(1e-3)))
    assert 0.3 < share < 0.9


def test_importance_of_an_empty_tree():
    assert int(diagnostics.log_histogram({}).sum()) == 0
    assert float(diagnostics.saturated_share({}, 1.0)) == 0.0


def test_record_batch_appends_weight_change_and_importance():
    imp = synthetic_importance()
    hist = np.asarray(diagnostics.log_histogram(imp["F"]))
    layers = ["a/kernel", "b/kernel"]
    record: dict = {}
    diagnostics.record_batch(record, layers, np.array([0.5, 0.25], np.float32), (hist, hist, 0.5, 1e-3))
    diagnostics.record_batch(record, layers, np.zeros(2, np.float32), (hist, hist, 0.75, 1e-3))
    diag = record["diagnostics"]
    assert diag["layers"] == layers
    assert diag["weight_change"] == [[0.5, 0.25], [0.0, 0.0]]
    assert diag["importance_saturated"] == [0.5, 0.75] and diag["importance_max_f"] == [1e-3, 1e-3]
    assert diag["importance_F"][0] == hist.tolist()
    json.dumps(record)  # plain lists and floats: the record stays JSON-serialisable
    plain: dict = {}
    diagnostics.record_batch(plain, layers, np.zeros(2, np.float32), None)
    assert not any(key.startswith("importance") for key in plain["diagnostics"])


def fake_run(run: int, batches: int, classes: int = 4, diverged=None, importance: bool = True) -> dict:
    rng = np.random.default_rng(run)
    diag = {
        "layers": ["body/fc1/kernel", "head/kernel"],
        "weight_change": rng.uniform(size=(batches, 2)).tolist(),
    }
    if importance:
        cells = len(diagnostics.IMPORTANCE_BIN_EDGES) + 1
        diag["importance_F"] = rng.integers(0, 50, size=(batches, cells)).tolist()
        diag["importance_F_hat"] = rng.integers(0, 50, size=(batches, cells)).tolist()
        diag["importance_saturated"] = rng.uniform(size=batches).tolist()
        diag["importance_max_f"] = [1e-3] * batches
    return {
        "run": run,
        "accuracy": rng.uniform(size=batches).tolist(),
        "confusion_matrices": rng.integers(0, 9, size=(batches, classes, classes)).tolist(),
        "diagnostics": diag,
        "diverged": diverged,
    }


@pytest.mark.parametrize("importance", [True, False])
def test_arrays_round_trip_with_a_shorter_diverged_run(importance):
    runs = [
        fake_run(0, 3, importance=importance),
        fake_run(1, 2, diverged={"batch": 1, "step": 4}, importance=importance),
    ]
    arrays = diagnostics.runs_to_arrays(runs)
    assert arrays["confusion_matrices"].shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(arrays["batches_done"], [3, 2])
    assert ("importance_F" in arrays) == importance
    restored = [{k: v for k, v in run.items() if k not in diagnostics.ARRAY_KEYS} for run in runs]
    diagnostics.arrays_to_runs(arrays, restored)
    assert restored == runs


def test_write_and_read_results(tmp_path):
    runs = [fake_run(0, 3), fake_run(1, 3)]
    results = {"config": {"setting": "sit"}, "strategies": {"toy": {"runs": runs, "summary": {"x": 1.0}}}}
    diagnostics.write_results(str(tmp_path), results)
    assert sorted(os.listdir(tmp_path)) == ["diagnostics_toy.npz", "results.json"]  # no temporary files left
    with open(tmp_path / "results.json") as f:
        light = json.load(f)
    for run in light["strategies"]["toy"]["runs"]:
        assert not set(diagnostics.ARRAY_KEYS) & set(run)
    assert light["strategies"]["toy"]["summary"] == {"x": 1.0}
    assert diagnostics.read_results(str(tmp_path)) == results
    assert "confusion_matrices" in results["strategies"]["toy"]["runs"][0]  # the caller's dict is untouched
