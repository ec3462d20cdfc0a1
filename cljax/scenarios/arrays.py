"""Scenarios from arrays in memory: NC (new classes) and NI (new instances) streams of your own data.

Every builder checks its input before building anything and raises ``DataError`` with one
sentence naming the argument: labels outside ``[0, num_classes)``, arrays of different lengths,
a class split that repeats or misses a class, a class with no training example, a batch that
would be empty.

``scenario_dataset(scenarios)`` wraps one scenario (or one per run) as a ``Dataset`` whose
protocol returns it, so ``StrategyJob.build``, ``run_members`` and ``cljax.api.train`` run it like
any benchmark.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from cljax.scenarios.base import DataError, Dataset, IncrementalBatch, Scenario, split_classes


def _labels(y, name: str, num_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.size == 0):
        raise DataError(f"{name} must be a 1-D array of integer labels, got shape {y.shape} and dtype {y.dtype}")
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.size:
        raise DataError(
            f"{name} holds label {int(bad[0])}, outside [0, {num_classes}) (num_classes={num_classes}); "
            f"{bad.size} labels are out of range"
        )
    return y.astype(np.int32)


def dataset_from_arrays(
    train_x, train_y, test_x, test_y, num_classes: int | None = None, name: str = "arrays", x_divisor: float = 1.0
) -> Dataset:
    """A ``Dataset`` of arrays (images [N, ...] in float32 or uint8 with ``x_divisor``; integer labels).
    ``num_classes`` defaults to the largest label + 1."""
    train_x, test_x = np.asarray(train_x), np.asarray(test_x)
    if num_classes is None:
        labels = np.concatenate([np.asarray(train_y).ravel(), np.asarray(test_y).ravel()])
        num_classes = int(labels.max()) + 1 if labels.size else 0
    if not isinstance(num_classes, int | np.integer) or num_classes < 2:
        raise DataError(f"num_classes={num_classes!r} is invalid; it must be an integer >= 2")
    num_classes = int(num_classes)
    train_y = _labels(train_y, "train_y", num_classes)
    test_y = _labels(test_y, "test_y", num_classes)
    for x, y, which in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        if len(x) != len(y):
            raise DataError(f"{which}_x has {len(x)} examples but {which}_y has {len(y)} labels")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"train_x examples have shape {train_x.shape[1:]} but test_x examples {test_x.shape[1:]}")
    if not len(train_y):
        raise DataError("train_x is empty")
    return Dataset(name, train_x, train_y, test_x, test_y, num_classes, x_divisor=x_divisor)


def nc_from_arrays(
    train_x,
    train_y,
    test_x,
    test_y,
    batch_classes: Sequence[Sequence[int]] | None = None,
    classes_per_batch: int = 0,
    first_batch_classes: int = 0,
    num_classes: int | None = None,
    name: str = "arrays_nc",
) -> Scenario:
    """NC stream (images as given: float, or uint8 with ``x_divisor`` at training): batch B_i holds
    every training example of its classes. The split is ``batch_classes`` (e.g. ``[[0, 1], [2, 3]]``,
    its classes in that order), or ``classes_per_batch`` (and ``first_batch_classes``) over the
    classes in order 0..C-1. Every class must be in exactly one batch and have training examples."""
    d = dataset_from_arrays(train_x, train_y, test_x, test_y, num_classes, name)
    if batch_classes is None:
        if classes_per_batch <= 0:
            raise DataError("give batch_classes (a list of class lists) or classes_per_batch > 0")
        try:
            batch_classes = split_classes(list(range(d.num_classes)), classes_per_batch, first_batch_classes)
        except ValueError as e:
            raise DataError(str(e)) from None
    groups = [[int(c) for c in group] for group in batch_classes]
    flat = [c for group in groups for c in group]
    if any(not group for group in groups):
        raise DataError(f"batch_classes={groups} has an empty batch")
    outside = sorted({c for c in flat if not 0 <= c < d.num_classes})
    if outside:
        raise DataError(f"batch_classes names class {outside[0]}, outside [0, {d.num_classes})")
    repeated = sorted({c for c in flat if flat.count(c) > 1})
    if repeated:
        raise DataError(f"batch_classes names class {repeated[0]} in more than one batch (NC: each class once)")
    missing = sorted(set(range(d.num_classes)) - set(flat))
    if missing:
        raise DataError(f"batch_classes leaves out class {missing[0]} (every class 0..{d.num_classes - 1} once)")
    counts = np.bincount(d.train_y, minlength=d.num_classes)
    empty = [c for c in flat if counts[c] == 0]
    if empty:
        raise DataError(f"class {empty[0]} has no training example in train_y")
    batches = []
    for task_id, classes in enumerate(groups):
        idx = np.flatnonzero(np.isin(d.train_y, classes))
        batches.append(IncrementalBatch(d.train_x[idx], d.train_y[idx], tuple(classes), task_id))
    return Scenario(name, tuple(batches), d.test_x, d.test_y, d.num_classes, tuple(flat))


def ni_from_arrays(
    train_x,
    train_y,
    test_x,
    test_y,
    num_batches: int,
    seed: int = 0,
    num_classes: int | None = None,
    name: str = "arrays_ni",
) -> Scenario:
    """NI stream (new instances of the same classes): each class's training examples are shuffled
    (``seed``) and dealt into ``num_batches`` parts of nearly equal size, so every batch holds every
    class. Each class needs at least ``num_batches`` training examples."""
    d = dataset_from_arrays(train_x, train_y, test_x, test_y, num_classes, name)
    if not isinstance(num_batches, int | np.integer) or num_batches < 1:
        raise DataError(f"num_batches={num_batches!r} is invalid; it must be a positive integer")
    counts = np.bincount(d.train_y, minlength=d.num_classes)
    short = [c for c in range(d.num_classes) if counts[c] < num_batches]
    if short:
        c = short[0]
        raise DataError(
            f"class {c} has {counts[c]} training examples, fewer than num_batches={num_batches}: a batch would miss it"
        )
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_batches)]
    for c in range(d.num_classes):
        idx = rng.permutation(np.flatnonzero(d.train_y == c))
        for i, share in enumerate(np.array_split(idx, num_batches)):
            parts[i].append(share)
    batches = []
    for i, shares in enumerate(parts):
        idx = np.sort(np.concatenate(shares))  # examples keep the array order inside a batch
        classes = tuple(int(c) for c in np.unique(d.train_y[idx]))
        batches.append(IncrementalBatch(d.train_x[idx], d.train_y[idx], classes, i))
    order = tuple(range(d.num_classes))
    return Scenario(name, tuple(batches), d.test_x, d.test_y, d.num_classes, order)


@dataclasses.dataclass(frozen=True)
class FixedScenarios:
    """A ``BenchmarkProtocol`` over given scenarios: run r is ``scenarios[r]`` (one scenario: every run)."""

    scenarios: tuple[Scenario, ...]

    @property
    def num_runs(self) -> int | None:
        return None if len(self.scenarios) == 1 else len(self.scenarios)

    def scenario(self, run: int) -> Scenario:
        if len(self.scenarios) == 1:
            return self.scenarios[0]
        if not 0 <= run < len(self.scenarios):
            raise DataError(f"run {run} has no scenario: {len(self.scenarios)} were given (runs 0..)")
        return self.scenarios[run]

    def capacity(self, cumulative: bool) -> int:
        sizes = [
            sum(len(b.y) for b in s.batches) if cumulative else max(len(b.y) for b in s.batches) for s in self.scenarios
        ]
        return max(sizes)


def scenario_dataset(scenarios: Scenario | Sequence[Scenario], x_divisor: float = 1.0) -> Dataset:
    """A ``Dataset`` whose protocol returns the given scenario(s) (run r: ``scenarios[r]``)."""
    scenarios = (scenarios,) if isinstance(scenarios, Scenario) else tuple(scenarios)
    if not scenarios:
        raise DataError("scenario_dataset needs at least one scenario")
    first = scenarios[0]
    for s in scenarios[1:]:
        if s.num_classes != first.num_classes or s.num_batches != first.num_batches:
            raise DataError("every run's scenario must have the same num_classes and number of batches")
        if s.input_shape != first.input_shape:
            raise DataError("every run's scenario must have the same input shape")
    train_x = np.concatenate([b.x for b in first.batches])
    train_y = np.concatenate([b.y for b in first.batches])
    protocol = FixedScenarios(scenarios)
    return Dataset(
        first.name, train_x, train_y, first.test_x, first.test_y, first.num_classes, protocol, x_divisor=x_divisor
    )
