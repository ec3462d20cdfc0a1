"""Fetching the benchmarks' official files: ``python -m cljax.data download core50 --data_dir=DIR``.

Downloads resume where they stopped (HTTP ``Range`` on ``<file>.part``), retry
a few times, and every file with a published checksum is verified (MD5, the
checksums the CORe50 authors' loaders use) before it gets its final name, so a
file under its official name is always complete. Archives of the PNG layout
are extracted in place. Nothing here runs during tests or training.

Layouts (``--layout``): ``npz`` (default) fetches ``core50_imgs.npz`` (8 GB,
read memory-mapped) with ``paths.pkl``, ``LUP.pkl``, ``labels.pkl``;
``png`` fetches and extracts ``core50_128x128.zip`` and
``batches_filelists.zip``. Both add ``test_filelist_reduced.txt`` (the reduced
test set, which has no published checksum: it is checked line by line).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence

from cljax.scenarios.base import DataError

CHUNK_BYTES = 1 << 20
_IMAGES_HOST = "http://bias.csr.unibo.it/maltoni/download/core50/"
_PAGE_HOST = "https://vlomonaco.github.io/core50/"


@dataclasses.dataclass(frozen=True)
class Remote:
    name: str  # file name in data_dir
    url: str
    md5: str | None  # published checksum; None = none published
    extract: bool = False  # a zip archive to unpack into data_dir


_REDUCED = Remote("test_filelist_reduced.txt", _PAGE_HOST + "extras/test_filelist_reduced.txt", None)
CORE50_FILES: dict[str, tuple[Remote, ...]] = {
    "npz": (
        Remote("paths.pkl", _PAGE_HOST + "data/paths.pkl", "b568f86998849184df3ec3465290f1b0"),
        Remote("LUP.pkl", _PAGE_HOST + "data/LUP.pkl", "33afc26faa460aca98739137fdfa606e"),
        Remote("labels.pkl", _PAGE_HOST + "data/labels.pkl", "281c95774306a2196f4505f22fd60ab1"),
        _REDUCED,
        Remote("core50_imgs.npz", _IMAGES_HOST + "core50_imgs.npz", "3689d65d0a1c760b87821b114c8c4c6c"),
    ),
    "png": (
        Remote(
            "batches_filelists.zip", _PAGE_HOST + "data/batches_filelists.zip", "e3297508a8998ba0c99a83d6b36bde62", True
        ),
        _REDUCED,
        Remote("core50_128x128.zip", _IMAGES_HOST + "core50_128x128.zip", "745f3373fed08d69343f1058ee559e13", True),
    ),
}


class IncompleteDownload(OSError):
    """The server closed the connection before sending every byte it announced."""


def md5_of(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _content_range_start(value: str | None) -> int | None:
    """'bytes 100-199/200' -> 100."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def _fetch_once(url: str, part: str, timeout: float) -> None:
    """Appends the rest of ``url`` to ``part`` (or rewrites it when the server ignores Range)."""
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left past ``offset``: the part is complete
            return
        raise
    with response:
        resumed = (
            offset and response.status == 206 and _content_range_start(response.headers.get("Content-Range")) == offset
        )
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        received = 0
        with open(part, "ab" if resumed else "wb") as f:
            while block := response.read(CHUNK_BYTES):
                f.write(block)
                received += len(block)
    if expected is not None and received < expected:
        raise IncompleteDownload(f"connection closed after {received} of {expected} bytes")


def download(
    url: str,
    dest: str,
    md5: str | None = None,
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    log: Callable[[str], None] = print,
) -> str:
    """Downloads ``url`` to ``dest`` through ``dest + '.part'``, resuming and retrying; verifies ``md5``.

    An existing ``dest`` with the right checksum is kept (nothing is fetched).
    """
    name = os.path.basename(dest)
    if os.path.exists(dest):
        if md5 is None or md5_of(dest) == md5:
            log(f"{name}: present")
            return dest
        raise DataError(f"{dest} exists but its MD5 is not the published {md5}; delete it and run the command again")
    part = dest + ".part"
    for attempt in range(retries + 1):
        try:
            if os.path.exists(part):
                log(f"{name}: resuming at byte {os.path.getsize(part)}")
            else:
                log(f"{name}: downloading {url}")
            _fetch_once(url, part, timeout_s)
            break
        except (OSError, http.client.HTTPException) as e:  # URLError and IncompleteDownload are OSErrors
            if attempt == retries:
                raise DataError(
                    f"downloading {url} failed after {retries + 1} attempts ({e}); run the command again "
                    f"to resume from {part}"
                ) from None
            log(f"{name}: {e}; retrying")
            time.sleep(backoff_s * (attempt + 1))
    if md5 is not None:
        got = md5_of(part)
        if got != md5:
            os.remove(part)
            raise DataError(
                f"{name} from {url} has MD5 {got}, not the published {md5}; the download was deleted, "
                "run the command again (if it fails again the server copy is damaged)"
            )
    os.replace(part, dest)
    return dest


def extract_zip(path: str, data_dir: str, log: Callable[[str], None] = print) -> None:
    """Unpacks ``path`` into ``data_dir`` once (a marker file records it); refuses paths leaving it."""
    marker = os.path.join(data_dir, f".{os.path.basename(path)}.extracted")
    if os.path.exists(marker):
        return
    root = os.path.realpath(data_dir)
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                target = os.path.realpath(os.path.join(root, member))
                if os.path.commonpath([root, target]) != root:
                    raise DataError(f"{path} holds {member!r}, a path outside {data_dir}; refusing to extract it")
            log(f"{os.path.basename(path)}: extracting")
            zf.extractall(root)
    except zipfile.BadZipFile as e:
        raise DataError(f"{path} is not a valid zip archive ({e}); delete it and run the command again") from None
    open(marker, "w").close()


def check_filelist(path: str) -> None:
    """The reduced test list has no published checksum: every line must be 'sS/oK/C_SS_OO_FFF.png label'."""
    from cljax.scenarios.core50 import parse_path, read_filelist

    try:
        paths, _ = read_filelist(path)
        if not paths:
            raise DataError(f"{path} is empty")
        for p in paths:
            parse_path(p)
    except DataError:
        os.replace(path, path + ".bad")
        raise


def fetch_core50(data_dir: str, layout: str = "npz", log: Callable[[str], None] = print, **download_kw) -> None:
    """Downloads (and for ``png`` extracts) CORe50's official files of ``layout`` into ``data_dir``."""
    if layout not in CORE50_FILES:
        raise DataError(f"layout={layout!r} is unknown; allowed: {', '.join(CORE50_FILES)}")
    os.makedirs(data_dir, exist_ok=True)
    for remote in CORE50_FILES[layout]:
        dest = download(remote.url, os.path.join(data_dir, remote.name), remote.md5, log=log, **download_kw)
        if remote.md5 is None:
            check_filelist(dest)
        if remote.extract:
            extract_zip(dest, data_dir, log)
    log(f"CORe50 ({layout}) is ready in {data_dir}: use --config.dataset=core50 --config.data_dir={data_dir}")


DATASETS = {"core50": fetch_core50}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cljax.data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("download", help="download a benchmark's official files (resumable, verified)")
    fetch.add_argument("dataset", choices=sorted(DATASETS))
    fetch.add_argument("--data_dir", required=True, help="directory to put the files in")
    fetch.add_argument("--layout", default="npz", choices=sorted(CORE50_FILES), help="CORe50 file layout")
    args = parser.parse_args(argv)
    try:
        DATASETS[args.dataset](args.data_dir, args.layout)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
