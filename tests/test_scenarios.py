"""NC builders, class orders, test sets and the Fashion-MNIST IDX reader."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cljax.scenarios import (
    DataError,
    Dataset,
    build_scenario,
    class_order_for_run,
    load_dataset,
    nc_scenario,
    split_classes,
)
from cljax.scenarios.fashion_mnist import load_fashion_mnist, read_idx


def toy_dataset(num_classes: int, per_class: int = 3) -> Dataset:
    y = np.repeat(np.arange(num_classes), per_class).astype(np.int32)
    x = np.arange(len(y), dtype=np.float32)[:, None, None, None]  # x encodes its own index
    return Dataset("toy", x, y, x + 1000, y.copy(), num_classes)


@settings(max_examples=40, deadline=None)
@given(
    num_classes=st.integers(2, 12),
    classes_per_batch=st.integers(1, 4),
    first=st.integers(0, 5),
    seed=st.integers(0, 5),
    run=st.integers(0, 4),
)
def test_nc_every_class_in_exactly_one_batch_in_run_order(num_classes, classes_per_batch, first, seed, run):
    dataset = toy_dataset(num_classes)
    order = class_order_for_run(num_classes, run, seed)
    first_size = first or classes_per_batch
    if first_size > num_classes or (num_classes - first_size) % classes_per_batch:
        with pytest.raises(ValueError, match="classes_per_batch"):
            nc_scenario(dataset, order, classes_per_batch, first)
        return
    scenario = nc_scenario(dataset, order, classes_per_batch, first)
    flat = [c for batch in scenario.batches for c in batch.classes]
    assert flat == order  # batches follow the run's class order
    assert sorted(flat) == list(range(num_classes))  # every class exactly once
    assert len(scenario.batches[0].classes) == first_size
    assert all(len(b.classes) == classes_per_batch for b in scenario.batches[1:])
    # Every training example lands in exactly one batch, the one of its class.
    ids = np.concatenate([b.x.reshape(-1) for b in scenario.batches]).astype(int)
    assert sorted(ids) == list(range(len(dataset.train_y)))
    for task_id, batch in enumerate(scenario.batches):
        assert batch.task_id == task_id
        assert set(batch.y.tolist()) == set(batch.classes)
    # Fixed test set: everything; expanding: exactly the classes seen so far.
    assert len(scenario.test_y) == len(dataset.test_y)
    for i in range(scenario.num_batches):
        seen = set(flat[: first_size + i * classes_per_batch])
        assert set(scenario.seen_classes(i)) == seen
        np.testing.assert_array_equal(scenario.expanding_test_mask(i), np.isin(dataset.test_y, list(seen)))


def test_class_orders_natural_for_run_zero_and_reproducible():
    assert class_order_for_run(10, 0, seed=7) == list(range(10))
    a, b = class_order_for_run(10, 3, seed=7), class_order_for_run(10, 3, seed=7)
    assert a == b and sorted(a) == list(range(10)) and a != list(range(10))
    assert class_order_for_run(10, 3, seed=8) != a


def test_split_classes_core50_shape():
    groups = split_classes(list(range(50)), classes_per_batch=5, first_batch_classes=10)
    assert [len(g) for g in groups] == [10] + [5] * 8


def test_num_batches_keeps_a_prefix_and_the_fixed_test_set():
    dataset = toy_dataset(10)
    scenario = nc_scenario(dataset, list(range(10)), 2, num_batches=2)
    assert scenario.batch_classes == [[0, 1], [2, 3]]
    assert len(scenario.test_y) == len(dataset.test_y)
    with pytest.raises(ValueError, match="num_batches=6"):
        nc_scenario(dataset, list(range(10)), 2, num_batches=6)


def test_digits_split_is_fixed_and_stratified(tiny_config):
    a, b = load_dataset("digits"), load_dataset("digits")
    np.testing.assert_array_equal(a.test_y, b.test_y)
    assert a.input_shape == (8, 8, 1) and a.num_classes == 10
    assert len(a.train_y) + len(a.test_y) == 1797
    assert a.train_x.dtype == np.uint8 and a.train_x.max() <= a.x_divisor == 16.0
    train_frac = np.bincount(a.train_y) / len(a.train_y)
    test_frac = np.bincount(a.test_y) / len(a.test_y)
    np.testing.assert_allclose(train_frac, test_frac, atol=0.01)
    scenario = build_scenario(tiny_config, 1, a)
    assert scenario.num_batches == 5 and scenario.class_order == tuple(class_order_for_run(10, 1, 0))


def write_idx(path: str, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(payload)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_reads_idx_files(tmp_path, compress):
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (20, 28, 28))
    train_y = np.arange(20) % 10
    test_x = rng.integers(0, 256, (10, 28, 28))
    test_y = np.arange(10)
    suffix = ".gz" if compress else ""
    for stem, arr in [
        ("train-images-idx3-ubyte", train_x),
        ("train-labels-idx1-ubyte", train_y),
        ("t10k-images-idx3-ubyte", test_x),
        ("t10k-labels-idx1-ubyte", test_y),
    ]:
        write_idx(str(tmp_path / (stem + suffix)), arr, compress)
    data = load_fashion_mnist(str(tmp_path))
    assert data.train_x.shape == (20, 28, 28, 1) and data.train_x.dtype == np.uint8
    assert data.x_divisor == 255.0
    np.testing.assert_array_equal(data.train_x[..., 0], train_x)
    np.testing.assert_array_equal(data.test_y, test_y)


def test_fashion_mnist_missing_and_truncated_files(tmp_path):
    with pytest.raises(DataError, match="does not exist.*dataset-fashion-mnist"):
        load_fashion_mnist(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*missing"):
        load_fashion_mnist(str(tmp_path))
    path = str(tmp_path / "x-idx3-ubyte")
    write_idx(path, np.zeros((4, 28, 28)), compress=False)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 10)
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(path)
    with open(path, "wb") as f:
        f.write(b"\x01\x02\x03\x04garbage")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(path)
