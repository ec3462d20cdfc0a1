"""The workdir: its path checked before anything is written, and one job at a time on it.

``check_path`` refuses, as bad input (``ConfigError``), a workdir that cannot be one (empty, a file,
a name component over the filesystem's limit) before anything is created. ``WorkdirLock`` is an
OS-level lock (``fcntl.flock``) on ``<workdir>/.cljax.lock``, held for the whole job: a second
process on the same workdir is refused at once, with one line naming the holder's pid. The kernel
releases the lock when its process ends, however it ends (a SIGKILL too), so no stale lock can
remain; the lock file itself stays (removing it would let two processes lock two different files).
"""

from __future__ import annotations

import errno
import fcntl
import os

from cljax.hparams import ConfigError

LOCK_FILE = ".cljax.lock"


class WorkdirBusy(ConfigError):
    """Another process holds the workdir's lock."""


def check_path(workdir: str) -> None:
    """Bad workdir paths as one-line ``ConfigError`` s; reads only."""
    if not workdir:
        raise ConfigError("--workdir is empty; give a directory (it is created if absent)")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir={workdir!r} exists and is not a directory")
    limit = 255
    existing = _existing_parent(workdir)
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        pass
    for part in os.path.normpath(workdir).split(os.sep):
        if len(part.encode()) > limit:
            size = len(part.encode())
            raise ConfigError(f"--workdir: the name {part[:20]!r}... has {size} bytes; the limit is {limit}")
    parent = existing
    if not os.path.isdir(parent):
        raise ConfigError(f"--workdir={workdir!r}: {parent!r} is not a directory")


def _existing_parent(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


class WorkdirLock:
    """``with WorkdirLock(workdir):`` creates the workdir if needed and holds its lock inside."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise WorkdirBusy(
                f"workdir {self.workdir!r} is in use by another job (process {holder}, lock {self.path}); "
                "wait for it to end, or use another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"
