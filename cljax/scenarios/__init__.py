"""Datasets and scenario builders. ``build_scenario(config, run)`` is the one entry point."""

from __future__ import annotations

from collections.abc import Callable

from cljax.scenarios.base import (
    DataError,
    Dataset,
    IncrementalBatch,
    Scenario,
    class_order_for_run,
    nc_scenario,
    split_classes,
)
from cljax.scenarios.digits import load_digits
from cljax.scenarios.fashion_mnist import DEFAULT_DIR as FASHION_MNIST_DIR
from cljax.scenarios.fashion_mnist import load_fashion_mnist

# name -> loader(data_dir) -> Dataset. Later datasets register here.
DATASETS: dict[str, Callable[[str], Dataset]] = {
    "digits": lambda data_dir: load_digits(),
    "fashion_mnist": lambda data_dir: load_fashion_mnist(data_dir or FASHION_MNIST_DIR),
}


def load_dataset(name: str, data_dir: str = "") -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r} is unknown; allowed: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](data_dir)


def build_scenario(config, run: int, dataset: Dataset | None = None) -> Scenario:
    """The NC stream of run ``run``: class order from (config.seed, run), split per config."""
    dataset = dataset if dataset is not None else load_dataset(config.dataset, config.data_dir)
    order = class_order_for_run(dataset.num_classes, run, config.seed)
    return nc_scenario(
        dataset,
        order,
        config.classes_per_batch,
        config.first_batch_classes,
        config.num_batches,
    )


__all__ = [
    "DATASETS",
    "Dataset",
    "DataError",
    "IncrementalBatch",
    "Scenario",
    "build_scenario",
    "class_order_for_run",
    "load_dataset",
    "nc_scenario",
    "split_classes",
]
