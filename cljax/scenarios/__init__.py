"""Datasets and scenario builders. ``build_scenario(config, run)`` is the one entry point."""

from __future__ import annotations

from collections.abc import Callable

from cljax.scenarios.arrays import (
    FixedScenarios,
    dataset_from_arrays,
    nc_from_arrays,
    ni_from_arrays,
    scenario_dataset,
)
from cljax.scenarios.base import (
    BenchmarkProtocol,
    DataError,
    Dataset,
    IncrementalBatch,
    NCProtocol,
    Scenario,
    class_order_for_run,
    nc_capacity,
    nc_scenario,
    split_classes,
)
from cljax.scenarios.cifar import load_cifar, load_cifar_split, load_icifar100
from cljax.scenarios.core50 import load_core50
from cljax.scenarios.digits import load_digits
from cljax.scenarios.fashion_mnist import DEFAULT_DIR as FASHION_MNIST_DIR
from cljax.scenarios.fashion_mnist import load_fashion_mnist

# name -> loader(data_dir) -> Dataset: plain datasets, split into batches by the config
# (classes_per_batch, first_batch_classes, class order per run). Later datasets register here.
DATASETS: dict[str, Callable[[str], Dataset]] = {
    "digits": lambda data_dir: load_digits(),
    "fashion_mnist": lambda data_dir: load_fashion_mnist(data_dir or FASHION_MNIST_DIR),
    "cifar10": lambda data_dir: load_cifar("cifar10", data_dir),
    "cifar100": lambda data_dir: load_cifar("cifar100", data_dir),
}

# name -> loader(config) -> Dataset with a ``protocol``: benchmarks whose batches their
# protocol fixes (official run lists, fixed splits); classes_per_batch does not apply.
BENCHMARKS: dict[str, Callable[..., Dataset]] = {
    "core50": load_core50,
    "icifar100": load_icifar100,
    "cifar_split": load_cifar_split,
}


def dataset_names() -> list[str]:
    return sorted([*DATASETS, *BENCHMARKS])


def load_dataset(name: str, data_dir: str = "", config=None) -> Dataset:
    """Reads a dataset; benchmarks (``BENCHMARKS``) need the whole ``config``."""
    if name in BENCHMARKS:
        if config is None:
            raise ValueError(f"dataset={name!r} is a benchmark with its own protocol: pass the config")
        return BENCHMARKS[name](config)
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r} is unknown; allowed: {', '.join(dataset_names())}")
    return DATASETS[name](data_dir)


def build_scenario(config, run: int, dataset: Dataset | None = None) -> Scenario:
    """The stream of run ``run``: the benchmark's own batches when it has a protocol, else
    the NC split of the config with the class order drawn from (config.seed, run)."""
    dataset = dataset if dataset is not None else load_dataset(config.dataset, config.data_dir, config)
    if dataset.protocol is not None:
        return dataset.protocol.scenario(run)
    order = class_order_for_run(dataset.num_classes, run, config.seed)
    return nc_scenario(
        dataset,
        order,
        config.classes_per_batch,
        config.first_batch_classes,
        config.num_batches,
    )


__all__ = [
    "BENCHMARKS",
    "BenchmarkProtocol",
    "DATASETS",
    "Dataset",
    "DataError",
    "FixedScenarios",
    "dataset_from_arrays",
    "nc_from_arrays",
    "ni_from_arrays",
    "scenario_dataset",
    "IncrementalBatch",
    "NCProtocol",
    "Scenario",
    "build_scenario",
    "class_order_for_run",
    "dataset_names",
    "load_dataset",
    "nc_capacity",
    "nc_scenario",
    "split_classes",
]
