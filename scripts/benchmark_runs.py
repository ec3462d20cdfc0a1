"""Runs vmapped against runs in sequence, end to end, in one process (``vmap_runs=true|false``).

    python scripts/benchmark_runs.py                                     # split Fashion-MNIST, MLP 400-400
    python scripts/benchmark_runs.py --synthetic=128,128,3:240 --model=googlenet --batch_size=64 --epochs=1

Each mode runs ``cljax.main``'s whole job (training, evaluation, records, checkpoints, report)
in a fresh workdir, with the persistent compilation cache off, so compilation is counted:

- ``vmapped``: ``--runs`` runs in one vmapped program per batch;
- ``sequential``: the same runs one at a time;
- ``one run``: a single run (the GPU goal compares ``vmapped`` with it).

``--mesh`` shards the runs and mini-batches over several devices (e.g. 8 CPU devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``); ``--compute_dtype=bfloat16`` trains in
mixed precision.

``--synthetic=H,W,C:N`` replaces the dataset by random images of that shape, N per class, 10 classes
(e.g. GoogLeNet at 128x128 without CORe50 on disk). Prints one line per mode and the ratios;
BUILD_NOTES.md records measured lines with their commands and machines.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cljax import experiment  # noqa: E402
from cljax.scenarios import DATASETS, Dataset  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/fashion_mnist.py", "Base config.", lock_config=False)
_RUNS = flags.DEFINE_integer("runs", 10, "runs (class orders) per mode")
_STRATEGY = flags.DEFINE_string("strategy", "naive", "strategy to train")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "epochs of every batch")
_BATCH = flags.DEFINE_integer("batch_size", 128, "mini-batch size")
_LR = flags.DEFINE_float("lr", 0.01, "learning rate (SGD)")
_MODEL = flags.DEFINE_string("model", "mlp", "model")
_HIDDEN = flags.DEFINE_list("hidden_sizes", ["400", "400"], "MLP hidden layers")
_SYNTHETIC = flags.DEFINE_string("synthetic", "", "H,W,C:N random images, N per class (10 classes)")
_MODES = flags.DEFINE_list("modes", ["vmapped", "sequential", "one"], "modes to run, in this order")
_MESH = flags.DEFINE_string("mesh", "auto", "device mesh (cljax/mesh.py): auto or e.g. runs:4,data:2")
_DTYPE = flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"], "forward/backward precision")


def synthetic_dataset(spec: str) -> Dataset:
    shape_text, per_class = spec.split(":")
    shape = tuple(int(v) for v in shape_text.split(","))
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), int(per_class)).astype(np.int32)
    x = rng.random((len(y), *shape), dtype=np.float32)
    test_y = np.repeat(np.arange(10), 20).astype(np.int32)
    return Dataset("synthetic", x, y, rng.random((len(test_y), *shape), dtype=np.float32), test_y, 10)


def job_config(base, vmap: bool, runs: int):
    config = base.copy_and_resolve_references()
    config.strategies = _STRATEGY.value
    config.num_runs = runs
    config.vmap_runs = "true" if vmap else "false"
    config.model = _MODEL.value
    config.hidden_sizes = tuple(int(h) for h in _HIDDEN.value)
    config.optimizer, config.momentum = "sgd", 0.0
    config.compilation_cache = False
    config.mesh = _MESH.value
    config.compute_dtype = _DTYPE.value
    for field, value in (("epochs_first", _EPOCHS.value), ("epochs", _EPOCHS.value), ("batch_size", _BATCH.value)):
        config[field] = value
        config[_STRATEGY.value][field] = None
    config.lr_first = config.lr = _LR.value
    config[_STRATEGY.value].lr_first = config[_STRATEGY.value].lr = None
    if _SYNTHETIC.value:
        config.dataset, config.data_dir = "synthetic", ""
    return config


def main(argv: list[str]) -> None:
    del argv
    if _SYNTHETIC.value:
        dataset = synthetic_dataset(_SYNTHETIC.value)
        DATASETS["synthetic"] = lambda data_dir: dataset
    modes = {"vmapped": (True, _RUNS.value), "sequential": (False, _RUNS.value), "one": (True, 1)}
    seconds, train = {}, {}
    for mode in _MODES.value:
        vmap, runs = modes[mode]
        config = job_config(_CONFIG.value, vmap, runs)
        with tempfile.TemporaryDirectory() as workdir:
            start = time.perf_counter()
            results = experiment.run_experiment(config, workdir, log=lambda event: None, show_progress=False)
            seconds[mode] = time.perf_counter() - start
        entry = next(iter(results["strategies"].values()))
        summary, records = entry["summary"], entry["runs"]
        # Training after the first batch (whose time includes compiling the fit): images per second.
        # Vmapped runs share one wall time per batch, so it is counted once.
        shared = vmap and runs > 1
        train[mode] = sum(sum(r["train_seconds"][1:]) for r in records[: 1 if shared else None])
        images = sum(sum(r["train_examples"][1:]) for r in records) * _EPOCHS.value
        print(
            f"{mode:<10} {runs:>3} run(s): {seconds[mode]:8.1f} s end to end, {train[mode]:7.1f} s training "
            f"after B_1 ({images / train[mode]:,.0f} img/s); final accuracy "
            f"{summary['final_accuracy_mean']:.3f} ± {summary['final_accuracy_std']:.3f}",
            flush=True,
        )
    if "vmapped" in seconds and "sequential" in seconds:
        print(
            f"sequential / vmapped: {seconds['sequential'] / seconds['vmapped']:.2f}x end to end, "
            f"{train['sequential'] / train['vmapped']:.2f}x training after B_1"
        )
    if "vmapped" in seconds and "one" in seconds:
        print(
            f"vmapped {_RUNS.value} runs / one run: {seconds['vmapped'] / seconds['one']:.2f}x end to end, "
            f"{train['vmapped'] / train['one']:.2f}x training after B_1"
        )


if __name__ == "__main__":
    app.run(main)
