"""The run directory: what may be in it, where osrm writes inside it, and its lock.

Every path osrm writes inside a run directory is built by :func:`run_path`, which refuses a
symbolic link anywhere below the run directory (``adapters -> /elsewhere`` would send the
writes elsewhere). :func:`check_run_dir` refuses such links up front, before anything is written.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from osrm import distributed, locking
from osrm.errors import OsrmError
from osrm.safety import ensure_inside

LOCK_FILE = ".osrm.lock"


def _link_error(link: Path, run_dir: Path) -> OsrmError:
    return OsrmError(
        f"{link} is a symbolic link; osrm writes only inside the run directory {run_dir} and "
        "does not follow links there (remove the link, or set run_dir to the real folder)"
    )


def run_path(run_dir: str | os.PathLike, *parts: str) -> Path:
    """``run_dir/parts...``, refusing symlinks below ``run_dir`` and paths that leave it."""
    root = Path(run_dir)
    node = root
    for part in Path(*parts).parts if parts else ():
        node = node / part
        if node.is_symlink():
            raise _link_error(node, root)
    return ensure_inside(root, node, str(Path(*parts)) if parts else "run_dir")


def check_run_dir(run_dir: Path) -> None:
    """A run directory is new, empty, or one of ours (it has ``config.yaml``), with no symlinks.

    Hidden entries do not count: they are temporary files of an atomic write (``config.yaml``
    being written by another process of the same launch, or left by a killed run) and the lock.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise OsrmError(f"run_dir {run_dir}: exists and is not a directory")
    visible = run_dir.is_dir() and any(not p.name.startswith(".") for p in run_dir.iterdir())
    if visible and not (run_dir / "config.yaml").is_file():
        raise OsrmError(
            f"run_dir {run_dir}: exists, is not empty and holds no osrm run (no config.yaml); "
            "choose a new or empty directory"
        )
    for top, dirs, files in os.walk(run_dir):  # does not descend into linked folders
        for name in sorted(dirs + files):
            if os.path.islink(os.path.join(top, name)):
                raise _link_error(Path(top) / name, run_dir)


def lock_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` and hold its lock until :func:`unlock_run_dir` or the process ends.

    Under a launcher only the main process locks: the others work in the same run with it.
    """
    if not distributed.is_main():
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OsrmError(f"run_dir {run_dir}: cannot create it ({e.strerror})") from None
    locking.acquire(run_path(run_dir, LOCK_FILE), f"run_dir {run_dir}")


def unlock_run_dir(run_dir: Path) -> None:
    locking.release(run_dir / LOCK_FILE)


@contextlib.contextmanager
def run_dir_locked(run_dir: Path) -> Iterator[None]:
    """Hold an existing run directory's lock for the block (re-entrant)."""
    check_run_dir(run_dir)
    with locking.held(run_path(run_dir, LOCK_FILE), f"run_dir {run_dir}"):
        yield
