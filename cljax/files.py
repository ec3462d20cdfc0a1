"""Atomic file writes: a temporary file in the same directory, fsync, rename.

A reader (or a run interrupted mid-write) never sees a truncated results.json,
.npz or picture: the old file stays until the new one is complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import IO, Any


def write_atomic(path: str, write: Callable[[IO[bytes]], Any], suffix: str = "") -> None:
    """Calls ``write(binary_file)`` on a temporary file, then renames it to ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results and reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str, payload: Any) -> None:
    write_atomic(path, lambda f: f.write(json.dumps(payload, indent=1).encode()), ".json")


def write_text_atomic(path: str, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()), ".tmp")
