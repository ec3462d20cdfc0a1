"""Running without the command line: scenarios from arrays (checked, one-line errors), ``train``
in memory or with a workdir, and per-batch callbacks (a fake logger, the CSV output)."""

from __future__ import annotations

import copy
import csv

import numpy as np
import pytest

import cljax
from cljax.scenarios import DataError, load_dataset, nc_scenario


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def arrays(d):
    return d.train_x, d.train_y, d.test_x, d.test_y


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_classes": [[0, 1], [1, 2]], "num_classes": 3}, "class 1 in more than one batch"),
        ({"batch_classes": [[0, 1]], "num_classes": 3}, "leaves out class 2"),
        ({"batch_classes": [[0, 1], [2, 7]], "num_classes": 3}, "names class 7, outside [0, 3)"),
        ({"batch_classes": [[0], [], [1, 2]], "num_classes": 3}, "has an empty batch"),
        ({"classes_per_batch": 2, "num_classes": 3}, "cannot split 3 classes"),
        ({"classes_per_batch": 1, "num_classes": 4}, "class 3 has no training example"),
        ({"classes_per_batch": 1, "num_classes": 2}, "train_y holds label 2, outside [0, 2)"),
    ],
)
def test_nc_from_arrays_checks_labels_and_split(kwargs, message):
    x = np.zeros((6, 3), np.float32)
    y = np.array([0, 0, 1, 1, 2, 2])
    with pytest.raises(DataError) as e:
        cljax.nc_from_arrays(x, y, x, y, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_array_shape_and_ni_errors():
    x, y = np.zeros((6, 3), np.float32), np.array([0, 0, 1, 1, 2, 2])
    with pytest.raises(DataError, match="train_x has 5 examples but train_y has 6 labels"):
        cljax.dataset_from_arrays(x[:5], y, x, y)
    with pytest.raises(DataError, match="class 0 has 2 training examples, fewer than num_batches=3"):
        cljax.ni_from_arrays(x, y, x, y, num_batches=3)
    with pytest.raises(DataError, match="1-D array of integer labels"):
        cljax.dataset_from_arrays(x, y.astype(np.float32), x, y)


def test_nc_scenario_refuses_labels_outside_num_classes(digits):
    bad = cljax.Dataset("bad", digits.train_x, digits.train_y, digits.test_x, digits.test_y, num_classes=8)
    with pytest.raises(DataError, match="has training label (8|9), outside \\[0, 8\\)"):
        nc_scenario(bad, list(range(8)), 2)


def test_nc_from_arrays_is_the_config_split(digits):
    ours = cljax.nc_from_arrays(*arrays(digits), classes_per_batch=2)
    reference = nc_scenario(digits, list(range(10)), 2)
    assert ours.batch_classes == reference.batch_classes
    for a, b in zip(ours.batches, reference.batches, strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)


def test_ni_from_arrays_deals_every_class_into_every_batch(digits):
    scenario = cljax.ni_from_arrays(*arrays(digits), num_batches=4, seed=1)
    assert scenario.num_batches == 4
    sizes = np.bincount(digits.train_y)
    for batch in scenario.batches:
        assert batch.classes == tuple(range(10))
        per_class = np.bincount(batch.y, minlength=10)
        assert np.all(np.abs(per_class - sizes / 4) <= 1)  # nearly equal shares
    together = np.sort(np.concatenate([b.y for b in scenario.batches]))
    np.testing.assert_array_equal(together, np.sort(digits.train_y))  # a partition of the training set


class FakeLogger(cljax.Callback):
    """What a Weights & Biases logger would see."""

    def __init__(self):
        self.events, self.closed = [], 0

    def on_batch(self, event):
        self.events.append(copy.deepcopy(event))

    def close(self):
        self.closed += 1


def without_timings(records):
    return [[{k: v for k, v in rec.items() if k != "train_seconds"} for rec in row] for row in records]


@pytest.mark.slow
def test_train_in_memory_and_with_a_workdir(tiny_config, digits, tmp_path):
    scenario = cljax.nc_from_arrays(*arrays(digits), batch_classes=[[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]])
    config = tiny_config
    logger = FakeLogger()
    records = cljax.train("naive", scenario, config, callbacks=[logger], x_divisor=digits.x_divisor)
    assert config.strategies == tiny_config.strategies != "naive"  # the given config is not modified
    assert len(records) == 1 and len(records[0]) == 1
    (record,) = records[0]
    assert record["batch_classes"] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert record["accuracy"][0] > 0.3  # B_1: 4 of 10 classes learnt
    assert logger.closed == 1 and [e["batch"] for e in logger.events] == [0, 1, 2]
    for i, event in enumerate(logger.events):
        assert event["strategy"] == "naive" and event["run"] == 0 and event["num_batches"] == 3
        assert event["accuracy"] == record["accuracy"][i] and event["loss"] == record["loss"][i]
        assert event["accuracy_row"] == record["accuracy_matrix"][i]

    workdir = tmp_path / "job"
    second = FakeLogger()
    saved = cljax.train("naive", scenario, config, workdir=str(workdir), callbacks=[second], x_divisor=16.0)
    assert without_timings(saved) == without_timings(records)  # the same run, now with checkpoints
    assert (workdir / "results.json").exists() and any((workdir / "checkpoints").iterdir())
    with open(workdir / "batches.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["accuracy"]) for r in rows] == [e["accuracy"] for e in second.events] == record["accuracy"]
    assert [e["batch"] for e in second.events] == [0, 1, 2] and second.closed == 1
