"""CIFAR-10 / CIFAR-100 and the paper's two CIFAR benchmarks.

Readers, in this order:
1. tensorflow-datasets (optional extra ``pip install cljax[tfds]``): ``tfds.data_source``
   over data prepared in array_record format in ``data_dir`` (or TFDS's default
   directory when ``data_dir`` is empty); nothing is downloaded.
2. the official python-pickle archives ``cifar-10-python.tar.gz`` /
   ``cifar-100-python.tar.gz`` in ``data_dir``, extracted
   (``cifar-10-batches-py/``, ``cifar-100-python/``) or not.

Benchmarks:
- ``icifar100`` (section 4.3, Fig. 8): CIFAR-100 in 10 batches of 10 classes;
  run 0 takes the classes in their natural order, run r > 0 a permutation drawn
  from (seed, r). The experiment reports both the fixed test set (all 100
  classes, Fig. 8 right) and the expanding one (classes seen so far, left).
- ``cifar_split`` (Fig. 3, Zenke et al. 2017): batch 1 is all of CIFAR-10, then
  batches of 10 CIFAR-100 classes; 110 classes, CIFAR-10's keep ids 0-9 and
  CIFAR-100 class c becomes 10 + c. ``num_batches`` = k keeps the benchmark of
  the first k tasks (Fig. 3: k = 6, CIFAR-100 classes 0-49), test set
  included; run r > 0 permutes those CIFAR-100 classes across batches 2..k.
  Works in ``sit`` and ``mt`` (the setting only changes the heads).
"""

from __future__ import annotations

import dataclasses
import os
import tarfile

import numpy as np

from cljax.config import ConfigError
from cljax.scenarios.base import DataError, Dataset, NCProtocol, class_order_for_run
from cljax.scenarios.files import load_pickle


@dataclasses.dataclass(frozen=True)
class CifarFiles:
    tfds_name: str
    archive: str  # official python-pickle archive
    folder: str  # its top folder
    train: tuple[str, ...]  # pickled batches inside the folder
    test: tuple[str, ...]
    label_key: str
    num_classes: int


CIFAR = {
    "cifar10": CifarFiles(
        "cifar10",
        "cifar-10-python.tar.gz",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
        10,
    ),
    "cifar100": CifarFiles(
        "cifar100", "cifar-100-python.tar.gz", "cifar-100-python", ("train",), ("test",), "fine_labels", 100
    ),
}
CIFAR10_BATCH = 10  # cifar_split: the classes of batch 1
CIFAR100_CLASSES_PER_BATCH = 10


def _how_to_get(files: CifarFiles, data_dir: str) -> str:
    return (
        f"{files.tfds_name} was found neither prepared for tensorflow-datasets nor as {files.archive} "
        f"(or extracted {files.folder}/) in data_dir={data_dir!r}; download {files.archive} from "
        f"www.cs.toronto.edu/~kriz/cifar.html into that directory, or prepare it with "
        f"`tfds build {files.tfds_name} --file_format=array_record --data_dir=DIR`"
    )


def _decode_batch(batch: object, files: CifarFiles, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: 'data' uint8 [n, 3072] (R, G, B planes of 32x32) and its labels."""
    if not isinstance(batch, dict):
        raise DataError(f"{where} is not a CIFAR batch (a pickled dict)")
    get = lambda key: batch.get(key.encode(), batch.get(key))
    data, labels = get("data"), get(files.label_key)
    if data is None or labels is None:
        raise DataError(f"{where} lacks the 'data' or {files.label_key!r} entry of a CIFAR batch")
    data = np.asarray(data)
    labels = np.asarray(labels, np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(
            f"{where} holds data {data.dtype}{data.shape} and {len(labels)} labels; expected uint8 [n, 3072]"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= files.num_classes):
        raise DataError(f"{where} has labels outside 0..{files.num_classes - 1}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_pickles(files: CifarFiles, data_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """{'train': (x uint8 [n,32,32,3], y), 'test': ...} from the extracted folder or the archive; None if absent."""
    folder = os.path.join(data_dir, files.folder)
    archive = os.path.join(data_dir, files.archive)
    if os.path.isdir(folder):
        read = lambda name: load_pickle(os.path.join(folder, name))
        tar = None
    elif os.path.isfile(archive):
        try:
            tar = tarfile.open(archive, "r:*")
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"cannot open {archive}: {e}; the archive is truncated or corrupt") from None

        def read(name: str) -> object:
            member = f"{files.folder}/{name}"
            try:
                with tar.extractfile(member) as f:
                    return load_pickle(f.read(), f"{archive}:{member}")
            except (KeyError, AttributeError):
                raise DataError(f"{archive} has no file {member}; it is not the official archive") from None
            except (tarfile.TarError, OSError, EOFError) as e:
                raise DataError(f"cannot read {member} from {archive}: {e}") from None
    else:
        return None
    try:
        splits = {}
        for split, names in (("train", files.train), ("test", files.test)):
            parts = [_decode_batch(read(name), files, f"{files.folder}/{name}") for name in names]
            splits[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        return splits
    finally:
        if tar is not None:
            tar.close()


def read_tfds(files: CifarFiles, data_dir: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]] | None, str]:
    """Same from ``tfds.data_source`` (no download); (None, why) when tfds or the prepared data is absent."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None, "tensorflow-datasets is not installed"
    splits = {}
    for split in ("train", "test"):
        try:
            source = tfds.data_source(files.tfds_name, split=split, data_dir=data_dir or None, download=False)
        except Exception as e:  # noqa: BLE001 - tfds raises many kinds when data is not prepared
            return None, f"tensorflow-datasets has no usable array_record copy: {type(e).__name__}"
        examples = [source[i] for i in range(len(source))]
        if not examples:
            raise DataError(f"tensorflow-datasets {files.tfds_name} split {split!r} in {data_dir!r} is empty")
        x = np.stack([np.asarray(e["image"], np.uint8) for e in examples])
        y = np.asarray([int(e["label"]) for e in examples], np.int64)
        if x.shape[1:] != (32, 32, 3) or y.min() < 0 or y.max() >= files.num_classes:
            raise DataError(f"tensorflow-datasets {files.tfds_name} {split}: unexpected images {x.shape} or labels")
        splits[split] = (x, y)
    return splits, ""


def read_cifar(name: str, data_dir: str = "") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (x uint8 [n, 32, 32, 3], y int64), 'test': ...} for 'cifar10' or 'cifar100'."""
    files = CIFAR[name]
    splits, why = read_tfds(files, data_dir)
    if splits is None:
        splits = read_pickles(files, data_dir)
    if splits is None:
        raise DataError(_how_to_get(files, data_dir) + (f" ({why})" if why else ""))
    return splits


def _as_arrays(splits, keep_class=None, label_offset: int = 0) -> tuple[np.ndarray, ...]:
    """(train_x, train_y, test_x, test_y): images uint8 (the model sees x / 255), labels int32 (+ offset)."""
    out = []
    for split in ("train", "test"):
        x, y = splits[split]
        if keep_class is not None:
            keep = keep_class(y)
            x, y = x[keep], y[keep]
        out += [np.asarray(x, np.uint8), (y + label_offset).astype(np.int32)]
    return tuple(out)


def load_cifar(name: str, data_dir: str = "") -> Dataset:
    """CIFAR-10 or CIFAR-100 as a plain dataset (NC split from the config), [32, 32, 3] uint8 (x / 255)."""
    train_x, train_y, test_x, test_y = _as_arrays(read_cifar(name, data_dir))
    return Dataset(name, train_x, train_y, test_x, test_y, num_classes=CIFAR[name].num_classes, x_divisor=255.0)


def load_icifar100(config) -> Dataset:
    """iCIFAR-100: 10 batches of 10 classes (``num_batches`` keeps the first k, fixed test set intact)."""
    base = load_cifar("cifar100", config.data_dir)
    if config.num_batches > 10:
        raise ConfigError(f"num_batches={config.num_batches} is invalid for dataset=icifar100: it has 10 batches")
    protocol = NCProtocol(
        dataset=base,
        class_order=lambda run: class_order_for_run(100, run, config.seed),
        classes_per_batch=10,
        num_batches=config.num_batches,
    )
    return dataclasses.replace(base, name="icifar100", protocol=protocol)


def load_cifar_split(config) -> Dataset:
    """CIFAR-10/100 split: all of CIFAR-10, then 10 CIFAR-100 classes per batch (``num_batches`` tasks)."""
    max_batches = 1 + 100 // CIFAR100_CLASSES_PER_BATCH
    if config.num_batches > max_batches:
        raise ConfigError(f"num_batches={config.num_batches} is invalid for dataset=cifar_split: it has 11 batches")
    num_batches = config.num_batches or max_batches
    c100_classes = (num_batches - 1) * CIFAR100_CLASSES_PER_BATCH
    c10 = _as_arrays(read_cifar("cifar10", config.data_dir))
    c100 = _as_arrays(read_cifar("cifar100", config.data_dir), lambda y: y < c100_classes, CIFAR10_BATCH)
    base = Dataset(
        "cifar_split",
        np.concatenate([c10[0], c100[0]]),
        np.concatenate([c10[1], c100[1]]),
        np.concatenate([c10[2], c100[2]]),
        np.concatenate([c10[3], c100[3]]),
        num_classes=CIFAR10_BATCH + c100_classes,
        x_divisor=255.0,
    )

    def class_order(run: int) -> list[int]:
        return list(range(CIFAR10_BATCH)) + [
            CIFAR10_BATCH + c for c in class_order_for_run(c100_classes, run, config.seed)
        ]

    protocol = NCProtocol(base, class_order, CIFAR100_CLASSES_PER_BATCH, first_batch_classes=CIFAR10_BATCH)
    return dataclasses.replace(base, protocol=protocol)
