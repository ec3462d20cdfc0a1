"""Scenario data structures and the NC (new classes) builder.

A *scenario* is what one run of a continual-learning experiment sees: a stream
of incremental batches B_1..B_T (each with its training arrays, class ids and a
task id for the multi-task setting) and one test set holding every class. The
*fixed* test set is all of it (CORe50 protocol, paper Fig. 7 and Fig. 8 right);
the *expanding* test set is the part whose labels were seen so far (Fig. 8
left). Labels keep the dataset's own class ids; the class order only decides
which batch a class belongs to, so one head of ``num_classes`` outputs serves
every run (the paper's *maximal* head, App. A).

Benchmarks with official batches (CORe50's run lists, the CIFAR splits) carry a
``BenchmarkProtocol`` in ``Dataset.protocol`` that builds each run's stream; in
CORe50 NC the official files re-map labels per run in order of appearance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np


class DataError(ValueError):
    """Missing, corrupt or inconsistent data files (one sentence, names the path)."""


class BenchmarkProtocol(Protocol):
    """A benchmark whose batches are fixed by its own protocol, not by a class split of the
    config: CORe50's official run lists, the CIFAR-10/100 split. ``build_scenario`` asks it
    for each run's stream, and the experiment for the padded capacity of a training set."""

    num_runs: int | None  # runs the protocol defines; None = any number (class orders drawn per run)

    def scenario(self, run: int) -> Scenario: ...

    def capacity(self, cumulative: bool) -> int:
        """Largest training set of any run: a single batch, or (``cumulative``) B_1 ∪ ... ∪ B_T."""
        ...


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A labelled train/test split. Images keep their stored dtype (uint8: 4x less memory than
    float32 on the host and on the device); the model sees ``x / x_divisor`` as float32, converted
    inside the compiled programs (``cljax.models.float_images``). Float images have divisor 1.

    ``protocol`` is set for benchmarks with official batches (CORe50, CIFAR-10/100
    split); their train/test arrays then hold every image any run uses, with the
    dataset's own class ids, and each run's labels come from the protocol.
    """

    name: str
    train_x: np.ndarray  # [N, ...] uint8 (or float32)
    train_y: np.ndarray  # [N] int32, class ids in [0, num_classes)
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    protocol: BenchmarkProtocol | None = None
    x_divisor: float = 1.0  # uint8 images: the model sees x / x_divisor (255: [0, 1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


@dataclasses.dataclass(frozen=True)
class IncrementalBatch:
    """One batch B_i of the stream."""

    x: np.ndarray  # [n_i, ...] the dataset's stored dtype (uint8)
    y: np.ndarray  # [n_i] int32
    # Class ids present in this batch. NC: disjoint across batches
    # (the classes it introduces); NI/NIC: a class may appear in several batches.
    classes: tuple[int, ...]
    task_id: int  # index of the batch; the task of the multi-task (MT) setting


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A stream of incremental batches plus the fixed test set."""

    name: str
    batches: tuple[IncrementalBatch, ...]
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    # The dataset's class ids in the order the stream introduces them. Where a protocol
    # re-labels per run (CORe50 NC: label l is the l-th object to appear), class_order[l]
    # is the dataset id (object) behind label l.
    class_order: tuple[int, ...]

    @property
    def num_batches(self) -> int:
        return len(self.batches)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.test_x.shape[1:])

    @property
    def batch_classes(self) -> list[list[int]]:
        return [list(b.classes) for b in self.batches]

    def seen_classes(self, i: int) -> list[int]:
        """Classes of B_1..B_{i+1} (0-based ``i``), in order of appearance."""
        seen: list[int] = []
        for batch in self.batches[: i + 1]:
            seen.extend(c for c in batch.classes if c not in seen)
        return seen

    def training_set(self, i: int, union: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Training arrays (x, y) of B_{i+1} (0-based ``i``), or with ``union`` of B_1 ∪ ... ∪ B_{i+1}
        (Cumulative's data)."""
        batches = self.batches[: i + 1] if union else self.batches[i : i + 1]
        return np.concatenate([b.x for b in batches]), np.concatenate([b.y for b in batches])

    def class_to_task(self) -> np.ndarray:
        """[num_classes] int32: the batch (task) that introduces each class; -1 if none."""
        task = np.full(self.num_classes, -1, np.int32)
        for batch in self.batches:
            for c in batch.classes:
                if task[c] < 0:
                    task[c] = batch.task_id
        return task

    def expanding_test_mask(self, i: int) -> np.ndarray:
        """[num_test] bool: test examples whose class was seen in B_1..B_{i+1}."""
        return np.isin(self.test_y, self.seen_classes(i))


def class_order_for_run(num_classes: int, run: int, seed: int) -> list[int]:
    """Run 0 uses the natural order 0..C-1; run r > 0 a permutation drawn from (seed, r)."""
    if run == 0:
        return list(range(num_classes))
    rng = np.random.default_rng([seed, run])
    return [int(c) for c in rng.permutation(num_classes)]


def nc_capacity(
    train_y: np.ndarray,
    num_classes: int,
    classes_per_batch: int,
    first_batch_classes: int = 0,
    num_batches: int = 0,
    cumulative: bool = False,
) -> int:
    """Rows to pad every batch to: the largest training set any class order can produce.

    A batch of k classes has at most the k largest class counts' examples; the
    cumulative set after the last batch holds every batch's classes.
    """
    counts = np.sort(np.bincount(train_y, minlength=num_classes))[::-1]
    first = first_batch_classes or classes_per_batch
    num_batches = num_batches or 1 + (num_classes - first) // classes_per_batch
    k = first + (num_batches - 1) * classes_per_batch if cumulative else max(first, classes_per_batch)
    return int(counts[:k].sum())


@dataclasses.dataclass(frozen=True)
class NCProtocol:
    """An NC benchmark whose split is fixed by its protocol (iCIFAR-100: 10 x 10 classes;
    CIFAR-10/100 split: CIFAR-10, then 10 CIFAR-100 classes per batch), with the class
    order of each run given by ``class_order(run)``."""

    dataset: Dataset  # the same images and labels, without a protocol
    class_order: Callable[[int], list[int]]
    classes_per_batch: int
    first_batch_classes: int = 0
    num_batches: int = 0
    num_runs: int | None = None

    def scenario(self, run: int) -> Scenario:
        return nc_scenario(
            self.dataset, self.class_order(run), self.classes_per_batch, self.first_batch_classes, self.num_batches
        )

    def capacity(self, cumulative: bool) -> int:
        d = self.dataset
        return nc_capacity(
            d.train_y, d.num_classes, self.classes_per_batch, self.first_batch_classes, self.num_batches, cumulative
        )


def split_classes(class_order: Sequence[int], classes_per_batch: int, first_batch_classes: int = 0) -> list[list[int]]:
    """Groups a class order into batches: ``first_batch_classes`` (0 = same as the rest), then
    ``classes_per_batch`` each (CORe50 NC: 10 then 5s). Raises ValueError when they do not divide."""
    first = first_batch_classes or classes_per_batch
    rest = len(class_order) - first
    if classes_per_batch <= 0 or first <= 0 or rest < 0 or rest % classes_per_batch:
        raise ValueError(
            f"cannot split {len(class_order)} classes into a first batch of {first} and then "
            f"batches of {classes_per_batch}: classes_per_batch must divide the "
            f"{max(rest, 0)} classes left after the first batch"
        )
    groups = [list(class_order[:first])]
    for start in range(first, len(class_order), classes_per_batch):
        groups.append(list(class_order[start : start + classes_per_batch]))
    return groups


def nc_scenario(
    dataset: Dataset,
    class_order: Sequence[int],
    classes_per_batch: int,
    first_batch_classes: int = 0,
    num_batches: int = 0,
) -> Scenario:
    """NC (new classes) stream: each batch holds every training example of its classes.

    ``num_batches`` > 0 keeps only the first that many batches (the test set then
    still holds every class of the dataset: the fixed test set).
    """
    if sorted(class_order) != list(range(dataset.num_classes)):
        raise ValueError(f"class_order must be a permutation of 0..{dataset.num_classes - 1}, got {list(class_order)}")
    groups = split_classes(class_order, classes_per_batch, first_batch_classes)
    if num_batches:
        if num_batches > len(groups):
            raise ValueError(f"num_batches={num_batches} but the split has only {len(groups)} batches")
        groups = groups[:num_batches]
    batches = []
    for task_id, classes in enumerate(groups):
        # Stable order inside a batch: examples keep the dataset order.
        idx = np.flatnonzero(np.isin(dataset.train_y, classes))
        batches.append(
            IncrementalBatch(
                x=dataset.train_x[idx],
                y=dataset.train_y[idx].astype(np.int32),
                classes=tuple(int(c) for c in classes),
                task_id=task_id,
            )
        )
    return Scenario(
        name=dataset.name,
        batches=tuple(batches),
        test_x=dataset.test_x,
        test_y=dataset.test_y.astype(np.int32),
        num_classes=dataset.num_classes,
        class_order=tuple(int(c) for c in class_order),
    )
