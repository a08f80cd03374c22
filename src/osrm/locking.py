"""Exclusive locks: one osrm process at a time per run directory and per merge output.

A lock is ``fcntl.flock`` on a hidden file (``run_dir/.osrm.lock``, or ``.<out>.osrm-lock``
beside a merge's ``--out``). The kernel drops it when the process ends, however it ends, so a
killed run never leaves a stale lock. The holder deletes the file while still holding it; a
process that locked a file deleted meanwhile sees that its inode is no longer the path's and
tries again, so two processes can never both hold "the" lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from osrm.errors import OsrmError

_HELD: dict[str, int] = {}  # absolute lock path -> descriptor (re-entrant within one process)


def _holder(path: Path) -> str:
    """``' (pid N)'`` as written by the holder, or ``''``."""
    try:
        pid = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def acquire(path: str | os.PathLike, what: str) -> bool:
    """Take the lock at ``path`` without waiting; False if this process already holds it.

    Raises:
        OsrmError: another process holds it, naming ``what`` (the directory it protects).
    """
    path = Path(path)
    key = os.path.abspath(path)
    if key in _HELD:
        return False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise OsrmError(f"{what}: cannot create its lock file {path} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OsrmError(
                f"{what}: another osrm process{_holder(path)} is writing there; wait for it to "
                f"finish (its lock is {path})"
            ) from None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # the holder deleted it after we opened it: lock the new file
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = fd
    return True


def release(path: str | os.PathLike) -> None:
    """Delete the lock file and drop the lock (no-op if this process does not hold it)."""
    fd = _HELD.pop(os.path.abspath(path), None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.unlink(path)  # while still locked: see the module docstring
    os.close(fd)


@contextlib.contextmanager
def held(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the lock at ``path`` for the block (re-entrant: an inner block is a no-op)."""
    took = acquire(path, what)
    try:
        yield
    finally:
        if took:
            release(path)


def beside(out: str | os.PathLike) -> Path:
    """The lock of an output folder: a hidden sibling in the nearest existing folder above it.

    ``a/b/out`` with only ``a/`` existing is locked as ``a/.b%out.osrm-lock``, so that nothing
    is created before the command has checked its inputs.
    """
    out = Path(os.path.abspath(out))
    parent = out.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    rel = out.relative_to(parent).parts
    return parent / f".{'%'.join(rel)}.osrm-lock"
