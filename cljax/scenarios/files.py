"""Reading the official distribution formats without surprises.

- ``NpzArray``: one array inside an ``.npz`` archive, read row by row. A member
  stored uncompressed (``np.savez``, e.g. CORe50's 8 GB ``core50_imgs.npz``) is
  memory-mapped at its offset inside the zip, so only the rows used are read;
  a compressed member (``np.savez_compressed``) is streamed in chunks, keeping
  only the wanted rows. ``np.load(mmap_mode='r')`` cannot do either: it ignores
  ``mmap_mode`` for archives and decompresses whole members into memory.
- ``load_pickle``: the official pickles (CORe50's ``*.pkl``, CIFAR's batches,
  written by Python 2) through an unpickler that only builds plain containers
  and NumPy arrays, so a tampered file cannot run code.
- ``resize_images``: uint8 images to a square size (anti-aliased bilinear).
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

from cljax.scenarios.base import DataError

_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # signature, version, flags, method, time, date, crc, sizes, name/extra len
_LOCAL_SIGNATURE = b"PK\x03\x04"
STREAM_CHUNK_BYTES = 64 << 20  # decompressed bytes per chunk when a member must be streamed


def _read_npy_header(f: BinaryIO, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(f)
    except ValueError as e:
        raise DataError(f"{where} is not a valid .npy array: {e}") from None
    raise DataError(f"{where} uses .npy format version {version}, which is not supported (1.0 and 2.0 are)")


class NpzArray:
    """One array of an ``.npz`` archive: ``shape``, ``dtype``, and ``take(indices)``.

    ``array`` is the ``np.memmap`` when the member is stored uncompressed, else None.
    """

    def __init__(self, path: str, key: str, chunk_bytes: int = STREAM_CHUNK_BYTES) -> None:
        self.path = path
        self.member = key + ".npy"
        self.chunk_bytes = chunk_bytes
        where = f"{path} (array {key!r})"
        try:
            with zipfile.ZipFile(path) as zf:
                try:
                    info = zf.getinfo(self.member)
                except KeyError:
                    raise DataError(
                        f"{path} holds no array {key!r} (it holds {sorted(n[:-4] for n in zf.namelist())})"
                    ) from None
                if info.flag_bits & 0x1:
                    raise DataError(f"{where} is encrypted")
                self.compressed = info.compress_type != zipfile.ZIP_STORED
                with zf.open(info) as member:
                    self.shape, fortran_order, self.dtype = _read_npy_header(member, where)
                    header_len = member.tell()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise DataError(f"cannot read {path}: {e}; the file is missing, truncated or not an .npz archive") from None
        if fortran_order:
            raise DataError(f"{where} is stored in Fortran order; only C-order arrays can be read by rows")
        if not self.shape:
            raise DataError(f"{where} is a scalar, expected an array of rows")
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        expected = header_len + self.row_bytes * self.shape[0]
        if info.file_size != expected:
            raise DataError(
                f"{where} is truncated or corrupt: its header announces shape {self.shape} "
                f"({expected} bytes) but the member holds {info.file_size} bytes"
            )
        self.array: np.memmap | None = None
        if not self.compressed:
            with open(path, "rb") as f:
                f.seek(info.header_offset)
                fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
            if fields[0] != _LOCAL_SIGNATURE:
                raise DataError(f"{path} is corrupt: no local zip header for {self.member}")
            name_len, extra_len = fields[-2], fields[-1]
            data_offset = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len + header_len
            self.array = np.memmap(path, self.dtype, mode="r", offset=data_offset, shape=self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` (any order, repeats allowed) as an in-memory array."""
        indices = np.asarray(indices, np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.shape[0]):
            raise DataError(f"{self.path}: row index out of range 0..{self.shape[0] - 1}")
        if self.array is not None:
            return np.asarray(self.array[indices])
        return self._stream(indices)

    def _stream(self, indices: np.ndarray) -> np.ndarray:
        """Decompresses the member once, front to back, copying the wanted rows."""
        out = np.empty((len(indices),) + tuple(self.shape[1:]), self.dtype)
        order = np.argsort(indices, kind="stable")
        wanted = indices[order]
        rows_per_chunk = max(1, self.chunk_bytes // max(self.row_bytes, 1))
        with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as member:
            _read_npy_header(member, self.path)
            pos, start = 0, 0  # first row of the current chunk; first entry of ``wanted`` not yet copied
            while start < len(wanted):
                count = min(rows_per_chunk, self.shape[0] - pos)
                raw = member.read(count * self.row_bytes)
                if len(raw) != count * self.row_bytes:
                    raise DataError(f"{self.path} is truncated: {self.member} ends inside row {pos}")
                chunk = np.frombuffer(raw, self.dtype).reshape((count,) + tuple(self.shape[1:]))
                stop = int(np.searchsorted(wanted, pos + count))
                out[order[start:stop]] = chunk[wanted[start:stop] - pos]
                pos, start = pos + count, stop
        return out


# Globals a data pickle may name: containers and NumPy arrays/scalars, nothing callable beyond them.
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module.startswith("numpy.core."):  # pickles written before NumPy 2
            module = "numpy._core." + module[len("numpy.core.") :]
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load_pickle(source: str | bytes, what: str = "") -> object:
    """Loads a data pickle (a path, or its bytes) written by Python 2 or 3; DataError if unreadable.

    ``encoding='bytes'`` keeps Python 2 ``str`` as ``bytes`` (CIFAR's dict keys, array
    buffers); callers accept both key types.
    """
    where = what or (source if isinstance(source, str) else "pickle")
    try:
        if isinstance(source, bytes):
            return _DataUnpickler(io.BytesIO(source), encoding="bytes").load()
        with open(source, "rb") as f:
            return _DataUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{where} is missing") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, OSError) as e:
        raise DataError(f"{where} is not a readable data pickle (truncated or corrupt?): {e}") from None


def as_text(value: object) -> object:
    """Python 2 ``str`` read as ``bytes`` -> ``str`` (other values unchanged)."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """[n, h, w, c] uint8 -> [n, size, size, c] uint8, PIL bilinear (anti-aliased when shrinking)."""
    from PIL import Image

    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        resized = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
        out[i] = resized.reshape(size, size, -1)
    return out


def load_images_in_chunks(
    read: Callable[[np.ndarray], np.ndarray],
    indices: np.ndarray,
    image_size: int,
    chunk: int = 2048,
) -> np.ndarray:
    """uint8 [len(indices), s, s, c] from ``read(index_chunk) -> uint8 [k, h, w, c]`` (resized if
    ``image_size``; the model sees x / 255).

    Reads, resizes and converts ``chunk`` images at a time into one preallocated
    array, so the peak memory is the result plus one chunk.
    """
    out = None
    for start in range(0, len(indices), chunk):
        raw = read(indices[start : start + chunk])
        if raw.ndim != 4:
            raise DataError(f"expected images of shape [n, height, width, channels], got {raw.shape}")
        if image_size:
            raw = resize_images(raw, image_size)
        if out is None:
            out = np.empty((len(indices),) + raw.shape[1:], np.uint8)
        elif raw.shape[1:] != out.shape[1:]:
            raise DataError(f"images differ in shape: {raw.shape[1:]} after {out.shape[1:]}")
        out[start : start + len(raw)] = raw
    if out is None:
        raise DataError("no images to load")
    return out
