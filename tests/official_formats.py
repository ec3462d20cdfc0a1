"""Tiny datasets written in the benchmarks' exact official formats (for tests only).

CORe50: 50 objects x 11 sessions x ``frames`` frames, each image a constant
colour that encodes (object, session, frame), so a test can tell from the
pixels alone which official image it got, even after resizing. Both layouts
are written with the same runs: ``core50_imgs.npz`` + ``paths.pkl`` /
``LUP.pkl`` / ``labels.pkl`` (the npz layout) and the ``core50_128x128/`` PNG
tree + ``batches_filelists/`` (the PNG layout), plus
``test_filelist_reduced.txt``. Runs follow the official protocols: NC 10 then
8 x 5 objects with labels re-mapped in order of appearance, NI one training
session per batch, NIC 10 sequences then 78 batches of 5 (object, session)
sequences.

CIFAR: the python-pickle batches of ``cifar-10-python.tar.gz`` and
``cifar-100-python.tar.gz`` (dicts with bytes keys, uint8 'data' [n, 3072]).

Fashion-MNIST: the four gzipped IDX files (magic 0x00000803 / 0x00000801,
big-endian dimensions, uint8 data); class c's images have a bright band at
rows 2c..2c+2, so a small MLP learns them in an epoch.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pickle
import tarfile

import numpy as np

NUM_OBJECTS = 50
SESSIONS = tuple(range(1, 12))
TEST_SESSIONS = (3, 7, 10)
TRAIN_SESSIONS = tuple(s for s in SESSIONS if s not in TEST_SESSIONS)


def core50_path(session: int, obj: int, frame: int) -> str:
    return f"s{session}/o{obj}/C_{session:02d}_{obj:02d}_{frame:03d}.png"


def colour(session: int, obj: int, frame: int) -> tuple[int, int, int]:
    return obj * 5, session * 20, frame * 40 + 10


def decode_colour(pixel) -> tuple[int, int, int]:
    """(session, object, frame) from an image's pixel (uint8 or float in [0, 1])."""
    p = np.asarray(pixel, np.float64)
    if p.max() <= 1.0:
        p = p * 255
    r, g, b = (int(round(v)) for v in p)
    return g // 20, r // 5, (b - 10) // 40


@dataclasses.dataclass
class Core50Files:
    data_dir: str
    paths: list[str]  # row order of core50_imgs.npz
    lup: dict[str, list[list[list[int]]]]  # [scenario][run][batch] -> rows; last = test
    labels: dict[str, list[list[list[int]]]]
    reduced: set[str]
    image_hw: tuple[int, int]


def _nc_run(rng, rows_of, run: int):
    order = list(range(1, NUM_OBJECTS + 1)) if run == 0 else [int(o) + 1 for o in rng.permutation(NUM_OBJECTS)]
    label_of = {obj: k for k, obj in enumerate(order)}
    groups = [order[:10]] + [order[10 + 5 * g : 15 + 5 * g] for g in range(8)]
    batches = []
    for group in groups:
        rows = [r for obj in group for s in TRAIN_SESSIONS for r in rows_of[(s, obj)]]
        batches.append(list(rng.permutation(rows)))
    return batches, label_of


def _ni_run(rng, rows_of, run: int):
    sessions = list(TRAIN_SESSIONS) if run == 0 else [TRAIN_SESSIONS[i] for i in rng.permutation(len(TRAIN_SESSIONS))]
    batches = [[r for obj in range(1, NUM_OBJECTS + 1) for r in rows_of[(s, obj)]] for s in sessions]
    return batches, {obj: obj - 1 for obj in range(1, NUM_OBJECTS + 1)}


def _nic_run(rng, rows_of, run: int):
    objects = [int(o) + 1 for o in rng.permutation(NUM_OBJECTS)]
    first = [(TRAIN_SESSIONS[int(rng.integers(len(TRAIN_SESSIONS)))], obj) for obj in objects[:10]]
    rest = [(s, obj) for obj in range(1, NUM_OBJECTS + 1) for s in TRAIN_SESSIONS if (s, obj) not in first]
    rest = [rest[i] for i in rng.permutation(len(rest))]
    groups = [first] + [rest[5 * g : 5 * g + 5] for g in range(len(rest) // 5)]
    batches = [[r for seq in group for r in rows_of[seq]] for group in groups]
    return batches, {obj: obj - 1 for obj in range(1, NUM_OBJECTS + 1)}


def write_core50(
    data_dir: str,
    *,
    frames: int = 2,
    image_hw: tuple[int, int] = (48, 48),
    runs: int = 3,
    layouts: tuple[str, ...] = ("npz", "png"),
    compressed: bool = False,
    seed: int = 0,
) -> Core50Files:
    """Writes the official CORe50 files (see module docstring) into ``data_dir``."""
    os.makedirs(data_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    keys = [(s, obj, f) for s in SESSIONS for obj in range(1, NUM_OBJECTS + 1) for f in range(frames)]
    paths = [core50_path(*k) for k in keys]
    rows_of: dict[tuple[int, int], list[int]] = {}
    for row, (s, obj, _) in enumerate(keys):
        rows_of.setdefault((s, obj), []).append(row)
    images = np.empty((len(keys), *image_hw, 3), np.uint8)
    images[:] = np.array([colour(*k) for k in keys], np.uint8)[:, None, None, :]

    test_rows = [r for s in TEST_SESSIONS for obj in range(1, NUM_OBJECTS + 1) for r in rows_of[(s, obj)]]
    lup: dict[str, list] = {}
    labels: dict[str, list] = {}
    for scenario, make_run in (("nc", _nc_run), ("ni", _ni_run), ("nic", _nic_run)):
        lup[scenario], labels[scenario] = [], []
        for run in range(runs):
            batches, label_of = make_run(rng, rows_of, run)
            test = list(rng.permutation(test_rows)) if run else list(test_rows)
            lists = [[int(r) for r in b] for b in batches] + [[int(r) for r in test]]
            lup[scenario].append(lists)
            labels[scenario].append([[label_of[keys[r][1]] for r in b] for b in lists])
    reduced = {core50_path(s, obj, 0) for s in TEST_SESSIONS for obj in range(1, NUM_OBJECTS + 1)}

    if "npz" in layouts:
        (np.savez_compressed if compressed else np.savez)(os.path.join(data_dir, "core50_imgs.npz"), x=images)
        # Python 2 wrote these: str became bytes (here through protocol 2's _codecs.encode).
        _dump(os.path.join(data_dir, "paths.pkl"), [p.encode() for p in paths])
        _dump(os.path.join(data_dir, "LUP.pkl"), {k.encode(): v for k, v in lup.items()})
        _dump(os.path.join(data_dir, "labels.pkl"), labels)
    if "png" in layouts:
        from PIL import Image

        for path, image in zip(paths, images, strict=True):
            full = os.path.join(data_dir, "core50_128x128", path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            Image.fromarray(image).save(full)
        for scenario, folder in (("nc", "NC_inc"), ("ni", "NI_inc"), ("nic", "NIC_inc")):
            for run in range(runs):
                run_dir = os.path.join(data_dir, "batches_filelists", folder, f"run{run}")
                os.makedirs(run_dir, exist_ok=True)
                lists, labs = lup[scenario][run], labels[scenario][run]
                names = [f"train_batch_{b:02d}_filelist.txt" for b in range(len(lists) - 1)] + ["test_filelist.txt"]
                for name, rows, ys in zip(names, lists, labs, strict=True):
                    with open(os.path.join(run_dir, name), "w") as f:
                        f.writelines(f"{paths[r]} {y}\n" for r, y in zip(rows, ys, strict=True))
    with open(os.path.join(data_dir, "test_filelist_reduced.txt"), "w") as f:
        f.writelines(f"{p} {int(p.split('/')[1][1:]) - 1}\n" for p in sorted(reduced))
    return Core50Files(data_dir, paths, lup, labels, reduced, image_hw)


def _dump(path: str, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def cifar_images(labels: np.ndarray, offset: int) -> np.ndarray:
    """uint8 [n, 3072] rows (R, G, B planes): pixel (0, 0) of each channel encodes (label, index)."""
    n = len(labels)
    data = np.zeros((n, 3, 32, 32), np.uint8)
    data[:, 0] = labels[:, None, None]
    data[:, 1] = ((np.arange(n) + offset) % 256)[:, None, None]
    data[:, 2, 0, 1] = 7  # one pixel off the diagonal tells channel-last decoding from a transpose
    return data.reshape(n, 3072)


def _batch(labels: np.ndarray, label_key: str, offset: int, name: str) -> bytes:
    batch = {
        b"batch_label": name.encode(),
        label_key.encode(): [int(y) for y in labels],
        b"data": cifar_images(labels, offset),
        b"filenames": [f"img_{offset + i}.png".encode() for i in range(len(labels))],
    }
    return pickle.dumps(batch, protocol=2)


def write_cifar(
    data_dir: str, name: str, per_class_train: int = 2, per_class_test: int = 1, extracted: bool = False
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Writes cifar-10-python.tar.gz or cifar-100-python.tar.gz (or its extracted folder).

    Returns {'train': (data uint8 [n, 3072], labels), 'test': ...} in file order.
    """
    num_classes, folder, archive = {
        "cifar10": (10, "cifar-10-batches-py", "cifar-10-python.tar.gz"),
        "cifar100": (100, "cifar-100-python", "cifar-100-python.tar.gz"),
    }[name]
    rng = np.random.default_rng(num_classes)
    train_y = rng.permutation(np.repeat(np.arange(num_classes), per_class_train))
    test_y = rng.permutation(np.repeat(np.arange(num_classes), per_class_test))
    members: dict[str, bytes] = {}
    if name == "cifar10":
        parts = np.array_split(train_y, 5)
        start = 0
        for i, part in enumerate(parts, 1):
            members[f"data_batch_{i}"] = _batch(part, "labels", start, f"training batch {i} of 5")
            start += len(part)
        members["test_batch"] = _batch(test_y, "labels", 10_000, "testing batch 1 of 1")
        members["batches.meta"] = pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}, protocol=2)
    else:
        members["train"] = _batch(train_y, "fine_labels", 0, "training batch 1 of 1")
        members["test"] = _batch(test_y, "fine_labels", 10_000, "testing batch 1 of 1")
        members["meta"] = pickle.dumps({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}, protocol=2)
    os.makedirs(data_dir, exist_ok=True)
    if extracted:
        os.makedirs(os.path.join(data_dir, folder), exist_ok=True)
        for member, payload in members.items():
            with open(os.path.join(data_dir, folder, member), "wb") as f:
                f.write(payload)
    else:
        with tarfile.open(os.path.join(data_dir, archive), "w:gz") as tar:
            for member, payload in members.items():
                info = tarfile.TarInfo(f"{folder}/{member}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return {
        "train": (cifar_images(train_y, 0), train_y),
        "test": (cifar_images(test_y, 10_000), test_y),
    }


FASHION_FILES = {
    "train-images-idx3-ubyte.gz": "train_x",
    "train-labels-idx1-ubyte.gz": "train_y",
    "t10k-images-idx3-ubyte.gz": "test_x",
    "t10k-labels-idx1-ubyte.gz": "test_y",
}


def write_idx(path: str, array: np.ndarray) -> None:
    """One gzipped IDX file of uint8 ``array``."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fashion_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = rng.integers(0, 60, (len(labels), 28, 28))
    for i, c in enumerate(labels):
        x[i, 2 * c : 2 * c + 3] = 255
    return x


def write_fashion_mnist(directory: str, train_per_class: int = 20, test_per_class: int = 3, seed: int = 0) -> dict:
    """Fashion-MNIST's four official files with ``train_per_class`` / ``test_per_class`` images of
    each of the 10 classes (labels shuffled); returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        y = rng.permutation(np.repeat(np.arange(10), per_class))
        arrays[f"{split}_x"], arrays[f"{split}_y"] = fashion_images(y, rng), y
    os.makedirs(directory, exist_ok=True)
    for name, key in FASHION_FILES.items():
        write_idx(os.path.join(directory, name), arrays[key])
    return arrays
