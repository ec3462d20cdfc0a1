"""Offline pre-training: the paper's pre-trained body, on a held-out slice of the training images.

The paper's networks never start from scratch: CORe50's from ImageNet, iCIFAR-100's CifarNet from
CIFAR-10 (sec. 4.2-4.3); each keeps the pre-trained body and gets a new classifier. Here the same
protocol runs on one dataset (config section ``pretrain``):

- ``all10``: a stratified 10% of the training images, every class (like ImageNet for CORe50);
- ``half5``: as many images, from the lower half of the classes only (0-4 of 10: like CIFAR-10
  for iCIFAR-100), stratified over them;
- ``scratch``: the control: ``all10``'s slice is held out the same way, nothing is pre-trained.

The stream (the config's batches) uses the remaining training images; the test set is the
official one. Slices are drawn from ``pretrain.seed`` alone, so every run and strategy sees the
same split. ``train`` is the one pre-training loop (scripts/pretrain.py uses it too);
``pretrained_params`` caches its result in the workdir.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cljax import engine
from cljax.files import write_json_atomic
from cljax.hparams import ConfigError
from cljax.scenarios import Dataset

SLICES = ("none", "all10", "half5", "scratch")
PRETRAINED = ("all10", "half5")  # slices that pre-train (scratch holds out all10's images, trains nothing)
FRACTION = 0.1  # of the training images, in the pre-training slice
CACHE_DIR = "pretrained"  # <workdir>/pretrained/<slice>-<hash of the pre-training fields>
OPTIMIZERS = ("adam", "sgd")


def slice_indices(labels: np.ndarray, num_classes: int, name: str, seed: int = 0) -> np.ndarray:
    """Sorted indices of the training images in pre-training slice ``name`` (empty for ``none``).

    ``all10`` (and ``scratch``): round(FRACTION * n_c) images of every class c, drawn without
    replacement. ``half5``: the same total, from classes [0, num_classes // 2), spread over them as
    evenly as their sizes allow (stratified: the remainder goes to the first classes)."""
    if name not in SLICES:
        raise ConfigError(f"pretrain.slice={name!r} is unknown; allowed: {', '.join(SLICES)}")
    if name == "none":
        return np.zeros(0, np.int64)
    rng = np.random.default_rng([seed, 14])
    by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    per_class = [int(round(FRACTION * len(rows))) for rows in by_class]
    if name == "half5":
        total, kept = sum(per_class), num_classes // 2
        share = [total // kept + (1 if c < total % kept else 0) for c in range(kept)]
        per_class = share + [0] * (num_classes - kept)
        for c in range(kept):
            if per_class[c] > len(by_class[c]):
                raise ConfigError(
                    f"pretrain.slice='half5' needs {per_class[c]} images of class {c}; it has {len(by_class[c])}"
                )
    chosen = [rng.choice(rows, size=n, replace=False) for rows, n in zip(by_class, per_class, strict=True)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def split_dataset(dataset: Dataset, name: str, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(pre-training slice, stream): disjoint parts of the training images, both with the official test set."""
    if dataset.protocol is not None:
        raise ConfigError(
            f"pretrain.slice={name!r} needs a plain dataset (split by the config); dataset={dataset.name!r} "
            "has its own protocol (use init_checkpoint with scripts/pretrain.py instead)"
        )
    picked = slice_indices(dataset.train_y, dataset.num_classes, name, seed)
    rest = np.setdiff1d(np.arange(len(dataset.train_y)), picked)

    def part(rows):
        return Dataset(
            dataset.name,
            dataset.train_x[rows],
            dataset.train_y[rows],
            dataset.test_x,
            dataset.test_y,
            dataset.num_classes,
            x_divisor=dataset.x_divisor,
        )

    return part(picked), part(rest)


def stream_dataset(config, dataset: Dataset) -> Dataset:
    """The images the stream uses: all of ``dataset`` without a pre-training slice, else the rest."""
    if config.pretrain.slice == "none":
        return dataset
    return split_dataset(dataset, config.pretrain.slice, config.pretrain.seed)[1]


def train(
    dataset: Dataset,
    model_config,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str = "adam",
    momentum: float = 0.0,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[engine.Params, dict[str, list[float]]]:
    """Trains the model of ``model_config`` (its ``model``, ``hidden_sizes``, ...: ``build_model``) on
    every training image of ``dataset`` with a head over all its classes; returns the params and, per
    epoch, the mean training loss and the test accuracy (all test images) after it."""
    from cljax.models import apply_function, build_model

    model = build_model(model_config, dataset.num_classes)
    init_key, key = jax.random.split(jax.random.key(seed))
    params = jax.jit(model.init)({"params": init_key}, jnp.zeros((1,) + dataset.input_shape, jnp.float32))
    tx = engine.make_optimizer(optimizer, momentum)
    state = engine.TrainState(params, tx.init(params), ())
    state = state._replace(opt_state=engine.set_learning_rate(state.opt_state, lr))
    apply_fn = apply_function(model, dataset.x_divisor)  # stored (uint8) images become float inside
    fit = engine.make_fit(apply_fn, tx, engine.cross_entropy, batch_size)
    data = jax.device_put({"x": dataset.train_x, "y": dataset.train_y})
    all_classes = jnp.ones(dataset.num_classes, bool)
    test_x = jax.device_put(dataset.test_x)
    chunk = max(1, min(1000, len(dataset.test_y)))
    history: dict[str, list[float]] = {"train_loss": [], "test_accuracy": []}
    for epoch in range(epochs):
        # One epoch per call (epochs is traced: one compilation) to report progress.
        state, metrics = fit(state, data, len(dataset.train_y), 1, all_classes, jax.random.fold_in(key, epoch))
        if int(metrics.nonfinite_step) >= 0:
            raise FloatingPointError(f"pre-training epoch {epoch + 1}: loss or gradient not finite; lower the lr")
        preds = engine.predict(
            apply_fn, state.params, test_x, all_classes[None], jnp.zeros(len(dataset.test_y), jnp.int32), chunk
        )
        history["train_loss"].append(float(metrics.loss))
        history["test_accuracy"].append(float(np.mean(np.asarray(preds) == dataset.test_y)))
        accuracy = history["test_accuracy"][-1]
        log(f"pre-train epoch {epoch + 1}/{epochs}: loss {metrics.loss:.4f} test accuracy {accuracy:.4f}")
    return state.params, history


def save_checkpoint(directory: str, params: engine.Params, summary: dict) -> None:
    """Writes the params checkpoint at ``directory`` and ``summary`` at ``directory``.json, atomically:
    the checkpoint is written under a temporary name and renamed last, so ``directory`` exists only
    complete (an interrupted save leaves a temporary directory, which the next save removes)."""
    from cljax.models.pretrained import save_params

    directory = os.path.abspath(directory).rstrip("/")
    if os.path.exists(directory):
        raise FileExistsError(f"{directory} exists; choose a new directory")
    for stale in glob.glob(glob.escape(directory) + ".partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    partial = f"{directory}.partial-{os.getpid()}"
    save_params(partial, params)
    write_json_atomic(directory + ".json", summary)
    os.rename(partial, directory)


def pretrain_fields(config) -> dict:
    """What the pre-trained weights depend on: the model, the data and the pre-training section."""
    model_fields = ("model", "hidden_sizes", "dense_init", "lrn", "aux_loss_weight", "classifier")
    model_fields += ("dataset", "data_dir")
    return {**{f: config[f] for f in model_fields}, "pretrain": config.pretrain.to_dict()}


def cache_path(config, workdir: str) -> str:
    fields = json.dumps(pretrain_fields(config), sort_keys=True, default=list)
    digest = hashlib.sha256(fields.encode()).hexdigest()[:12]
    return os.path.join(workdir, CACHE_DIR, f"{config.pretrain.slice}-{digest}")


def needs_pretraining(config) -> bool:
    return config.pretrain.slice in PRETRAINED and not config.init_checkpoint


def pretrained_params(config, dataset: Dataset, workdir: str, log: Callable[[str], None] = print) -> str:
    """The checkpoint of ``config``'s pre-training slice in ``workdir``: reused when it exists (same
    model, data and pre-training fields), else trained on the slice of ``dataset`` (the full training
    set) and saved atomically. Returns its path."""
    path = cache_path(config, workdir)
    if os.path.isdir(path):
        log(f"pre-trained weights: reusing {path}")
        return path
    p = config.pretrain
    part, _ = split_dataset(dataset, p.slice, p.seed)
    log(f"pre-training on slice {p.slice} ({len(part.train_y)} images, classes {sorted(set(part.train_y.tolist()))})")
    params, history = train(part, config, p.epochs, p.lr, p.batch_size, p.optimizer, p.momentum, p.seed, log=log)
    summary = {**pretrain_fields(config), "num_images": len(part.train_y), **history}
    summary.update(slice_classes_accuracy=slice_classes_accuracy(config, part, params))
    save_checkpoint(path, params, summary)
    log(f"pre-trained weights saved: {path} (test accuracy {history['test_accuracy'][-1]:.4f})")
    return path


def slice_classes_accuracy(config, part: Dataset, params) -> float:
    """Test accuracy on the test images of the slice's classes, scored among those classes only."""
    from cljax.models import apply_function, build_model

    classes = np.zeros(part.num_classes, bool)
    classes[np.unique(part.train_y)] = True
    rows = classes[part.test_y]
    if not rows.any():
        return float("nan")
    apply_fn = apply_function(build_model(config, part.num_classes), part.x_divisor)
    x, mask_index = jnp.asarray(part.test_x[rows]), jnp.zeros(int(rows.sum()), jnp.int32)
    preds = engine.predict(apply_fn, params, x, jnp.asarray(classes)[None], mask_index, 1000)
    return float(np.mean(np.asarray(preds) == part.test_y[rows]))
