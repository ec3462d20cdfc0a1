"""CIFAR readers (python-pickle archives, tensorflow-datasets) and the iCIFAR-100 / CIFAR-10/100 split protocols."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cljax import experiment
from cljax.config import ConfigError, base_config
from cljax.scenarios import DataError, build_scenario, load_dataset
from cljax.scenarios.cifar import load_cifar, read_cifar
from tests.official_formats import write_cifar


def tfds_or_fail():
    """tensorflow-datasets is an optional extra: CI installs it and must run these tests;
    elsewhere they are reported as skipped (pytest -ra lists the reason)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("tensorflow-datasets is expected in CI (pip install '.[tfds]')")
        pytest.skip("tensorflow-datasets is not installed (pip install '.[tfds]')")
    return tfds


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("cifar"))
    written = {
        "cifar10": write_cifar(data_dir, "cifar10", per_class_train=4, per_class_test=2),
        "cifar100": write_cifar(data_dir, "cifar100", per_class_train=3, per_class_test=1),
    }
    return data_dir, written


def chw_to_hwc(rows: np.ndarray) -> np.ndarray:
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def cifar_config(dataset: str, data_dir: str, **fields):
    config = base_config()
    config.dataset = dataset
    config.data_dir = data_dir
    for name, value in fields.items():
        setattr(config, name, value)
    return config


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_pickle_archives_are_read_exactly(cifar_dir, name):
    data_dir, written = cifar_dir
    splits = read_cifar(name, data_dir)
    for split in ("train", "test"):
        x, y = splits[split]
        rows, labels = written[name][split]
        np.testing.assert_array_equal(y, labels)
        np.testing.assert_array_equal(x, chw_to_hwc(rows))
        assert x.shape[1:] == (32, 32, 3)
        # Channel planes decoded to channels last: R encodes the label, pixel (0, 1) of B is 7.
        np.testing.assert_array_equal(x[:, 5, 9, 0], labels)
        assert (x[:, 0, 1, 2] == 7).all() and (x[:, 1, 0, 2] == 0).all()


def test_extracted_folder_reads_like_the_archive(tmp_path, cifar_dir):
    written = write_cifar(str(tmp_path), "cifar100", per_class_train=3, per_class_test=1, extracted=True)
    assert not (tmp_path / "cifar-100-python.tar.gz").exists()
    x, y = read_cifar("cifar100", str(tmp_path))["train"]
    np.testing.assert_array_equal(x, chw_to_hwc(written["train"][0]))
    np.testing.assert_array_equal(y, written["train"][1])


def test_plain_cifar_dataset_is_split_by_the_config(cifar_dir):
    data_dir, written = cifar_dir
    dataset = load_cifar("cifar10", data_dir)
    assert dataset.protocol is None and dataset.num_classes == 10
    assert dataset.train_x.dtype == np.uint8 and dataset.x_divisor == 255.0
    scenario = build_scenario(cifar_config("cifar10", data_dir, classes_per_batch=5), 0, dataset)
    assert scenario.batch_classes == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_icifar100_is_10_batches_of_10_classes(cifar_dir):
    data_dir, written = cifar_dir
    config = cifar_config("icifar100", data_dir, num_runs=2)
    dataset = load_dataset("icifar100", data_dir, config)
    assert dataset.num_classes == 100
    run0, run1 = build_scenario(config, 0, dataset), build_scenario(config, 1, dataset)
    assert run0.batch_classes == [list(range(10 * b, 10 * b + 10)) for b in range(10)]  # run 0: natural order
    assert run1.class_order != run0.class_order
    for scenario in (run0, run1):
        assert [len(c) for c in scenario.batch_classes] == [10] * 10
        assert sorted(c for b in scenario.batch_classes for c in b) == list(range(100))
        assert sum(len(b.y) for b in scenario.batches) == len(written["cifar100"]["train"][1])
        for batch in scenario.batches:
            assert set(batch.y) == set(batch.classes)
        # Fixed test set: all 100 classes after every batch; expanding: the classes seen so far.
        assert len(scenario.test_y) == len(written["cifar100"]["test"][1])
        mask = scenario.expanding_test_mask(2)
        assert set(scenario.test_y[mask]) == set(scenario.seen_classes(2)) and len(scenario.seen_classes(2)) == 30
    assert experiment.data_capacity(dataset, config, union=False) == 10 * 3
    assert experiment.data_capacity(dataset, config, union=True) == 100 * 3


@pytest.mark.parametrize("setting", ["sit", "mt"])
def test_cifar_split_first_six_batches(cifar_dir, setting, tmp_path):
    data_dir, written = cifar_dir
    config = cifar_config("cifar_split", data_dir, num_batches=6, setting=setting, num_runs=2)
    dataset = load_dataset("cifar_split", data_dir, config)
    assert dataset.num_classes == 60
    c10_train, c10_test = written["cifar10"]["train"][1], written["cifar10"]["test"][1]
    c100_train, c100_test = written["cifar100"]["train"][1], written["cifar100"]["test"][1]
    for run in range(2):
        scenario = build_scenario(config, run, dataset)
        assert scenario.num_batches == 6
        first = scenario.batches[0]
        assert first.classes == tuple(range(10)) and len(first.y) == len(c10_train)  # all of CIFAR-10
        np.testing.assert_array_equal(first.y, c10_train)
        later = [c for b in scenario.batches[1:] for c in b.classes]
        assert sorted(later) == list(range(10, 60)) and all(len(b.classes) == 10 for b in scenario.batches[1:])
        # CIFAR-100 class c is class 10 + c; the first five tasks hold CIFAR-100 classes 0..49.
        assert sum(len(b.y) for b in scenario.batches[1:]) == int((c100_train < 50).sum())
        assert len(scenario.test_y) == len(c10_test) + int((c100_test < 50).sum())
        np.testing.assert_array_equal(
            np.sort(scenario.test_y[len(c10_test) :]), np.sort(c100_test[c100_test < 50] + 10)
        )
        if run == 0:
            assert scenario.batch_classes[1] == list(range(10, 20))
    assert experiment.data_capacity(dataset, config, union=False) == len(c10_train)
    results = experiment.run_experiment(
        cifar_config(
            "cifar_split",
            data_dir,
            num_batches=3,
            setting=setting,
            num_runs=1,
            strategies="naive",
            hidden_sizes=(8,),
            epochs_first=1,
            epochs=1,
        ),
        str(tmp_path),
        log=lambda event: None,
    )
    record = results["strategies"]["naive"]["runs"][0]
    assert record["head"] == ("multi" if setting == "mt" else "maximal")
    assert record["train_examples"][0] == len(c10_train) and len(record["accuracy"]) == 3


def test_cifar_split_all_eleven_batches(cifar_dir):
    data_dir, _ = cifar_dir
    config = cifar_config("cifar_split", data_dir)
    dataset = load_dataset("cifar_split", data_dir, config)
    assert dataset.num_classes == 110
    assert build_scenario(config, 0, dataset).num_batches == 11


@pytest.mark.parametrize(
    ("dataset", "fields", "message"),
    [
        ("cifar_split", {"num_batches": 12}, "num_batches=12 is invalid for dataset=cifar_split"),
        ("icifar100", {"num_batches": 11}, "num_batches=11 is invalid for dataset=icifar100"),
    ],
)
def test_bad_split_config(cifar_dir, dataset, fields, message):
    with pytest.raises(ConfigError, match=message):
        experiment.prepare(cifar_config(dataset, cifar_dir[0], **fields))


def test_missing_cifar_names_the_archive_and_directory(tmp_path):
    with pytest.raises(DataError, match=r"cifar-100-python\.tar\.gz .*data_dir=.*cifar\.html"):
        experiment.prepare(cifar_config("icifar100", str(tmp_path)))


def test_corrupt_archive_is_a_data_error(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_cifar("cifar10", str(tmp_path))


def test_tfds_data_source_is_used_when_prepared(tmp_path):
    tfds = tfds_or_fail()
    rng = np.random.default_rng(0)
    made = {}

    def as_data_source(builder, split, **kwargs):
        num_classes = builder.info.features["label"].num_classes
        n = 3 * num_classes if split == "train" else num_classes
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % num_classes)
        made[(builder.name, split)] = (images, labels)
        return [
            {"image": image, "label": np.int64(label), "id": f"{split}_{i}"}
            for i, (image, label) in enumerate(zip(images, labels, strict=True))
        ]

    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
        dataset = load_dataset("icifar100", str(tmp_path), cifar_config("icifar100", str(tmp_path)))
        plain = load_cifar("cifar10", str(tmp_path))  # no pickles in tmp_path: only tfds can have given it
    images, labels = made[("cifar100", "train")]
    np.testing.assert_array_equal(dataset.train_x, images)
    np.testing.assert_array_equal(dataset.train_y, labels)
    np.testing.assert_array_equal(plain.test_y, made[("cifar10", "test")][1])
    scenario = build_scenario(cifar_config("icifar100", str(tmp_path)), 0, dataset)
    assert [len(b.y) for b in scenario.batches] == [30] * 10


def test_tfds_mock_data_random_examples(tmp_path):
    tfds = tfds_or_fail()
    with tfds.testing.mock_data(num_examples=40):
        splits = read_cifar("cifar100", str(tmp_path))
    x, y = splits["train"]
    assert x.shape == (40, 32, 32, 3) and x.dtype == np.uint8
    assert y.min() >= 0 and y.max() < 100


def test_pickles_are_used_when_tfds_data_is_not_prepared(cifar_dir):
    tfds_or_fail()  # with tfds installed but nothing prepared in data_dir, the pickles are read
    data_dir, written = cifar_dir
    np.testing.assert_array_equal(read_cifar("cifar10", data_dir)["test"][1], written["cifar10"]["test"][1])
