"""Fashion-MNIST from the standard IDX files (gzipped or not).

The default directory is where Debian's ``dataset-fashion-mnist`` package puts
them; any directory holding the four official files works.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from cljax.scenarios.base import DataError, Dataset

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
HOW_TO_GET = (
    "install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or download the "
    "four *-ubyte.gz files from github.com/zalandoresearch/fashion-mnist into that directory"
)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file (magic 0x0000 <dtype> <ndim>, big-endian dims, then data)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # missing, unreadable, truncated or corrupt gzip
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: its header is incomplete")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is truncated or corrupt: header announces shape {dims} "
            f"({expected} bytes) but {len(raw) - header} bytes follow"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def _find(data_dir: str, stem: str) -> str:
    for candidate in (stem + ".gz", stem):
        path = os.path.join(data_dir, candidate)
        if os.path.exists(path):
            return path
    raise DataError(f"Fashion-MNIST file {stem}[.gz] is missing from data_dir={data_dir!r}; {HOW_TO_GET}")


def load_fashion_mnist(data_dir: str = DEFAULT_DIR) -> Dataset:
    """Train 60,000 / test 10,000 images, [28, 28, 1] uint8 (seen by the model as x / 255), 10 classes."""
    if not os.path.isdir(data_dir):
        raise DataError(f"Fashion-MNIST directory data_dir={data_dir!r} does not exist; {HOW_TO_GET}")
    arrays = {key: read_idx(_find(data_dir, stem)) for key, stem in FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"Fashion-MNIST {split} files in {data_dir!r} disagree: images {x.shape}, labels {y.shape}")
        if y.size and int(y.max()) >= 10:
            raise DataError(f"Fashion-MNIST {split} labels in {data_dir!r} go beyond class 9")
    as_images = lambda a: np.ascontiguousarray(a.astype(np.uint8)[..., None])
    return Dataset(
        "fashion_mnist",
        as_images(arrays["train_x"]),
        arrays["train_y"].astype(np.int32),
        as_images(arrays["test_x"]),
        arrays["test_y"].astype(np.int32),
        num_classes=10,
        x_divisor=255.0,
    )
