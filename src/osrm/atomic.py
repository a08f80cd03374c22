"""Atomic artifacts: write to a temporary sibling, then rename into place.

A crash or a failed write leaves either the old artifact or nothing, never half a file that a
later stage could trust. A failed write (disk full, read-only or missing folder) is reported as
one :class:`~osrm.errors.OsrmError` line naming the artifact, not the temporary path. A SIGKILL
can leave a hidden ``.<name>.<random>.tmp`` sibling behind; nothing ever reads those.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from osrm.errors import OsrmError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_error(path: Path, err: OSError) -> OsrmError:
    """One line for a failed write of ``path`` (the errno text, e.g. 'No space left on device')."""
    blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        return OsrmError(f"cannot write {path}: {blocked} is a file, not a directory")
    return OsrmError(f"cannot write {path}: {err.strerror or err}")


def _is_ours(err: OSError, tmp: Path, path: Path) -> bool:
    """Whether an OSError is about writing this artifact (not, say, reading an input)."""
    if err.filename is None:  # write()/flush() errors such as ENOSPC carry no file name
        return True
    name = os.fspath(err.filename)
    return name == os.fspath(path) or name.startswith(os.fspath(tmp))


def _sibling(path: Path, make: Callable[..., str]) -> Path:
    """A new temporary file or folder (``make``: mkstemp-like) beside ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return Path(make(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise write_error(path, e) from None


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``."""
    path = Path(path)

    def make(**kw) -> str:
        fd, tmp = tempfile.mkstemp(**kw)
        os.close(fd)
        return tmp

    tmp_path = _sibling(path, make)
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts are shared files
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        if _is_ours(e, tmp_path, path):
            raise write_error(path, e) from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path``.

    An existing ``path`` is moved aside first and removed only after the new one is in place.
    """
    path = Path(path)
    tmp = _sibling(path, tempfile.mkdtemp)
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        _swap_in(tmp, path)
    except OSError as e:
        if _is_ours(e, tmp, path):
            raise write_error(path, e) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, path: Path) -> None:
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.replace(path, old / path.name)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:  # put the finished artifact back
            os.replace(old / path.name, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_safetensors(
    path: str | os.PathLike, tensors: Mapping, metadata: Mapping[str, str]
) -> None:
    """``safetensors.torch.save_file`` atomically, with the same bytes for the same content.

    safetensors writes ``__metadata__`` from a hash map whose order changes from one process to
    the next; the keys are sorted here, so equal statistics give byte-identical files.
    """
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata))
        _sort_metadata(tmp)


def _sort_metadata(path: Path) -> None:
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        if not header.get("__metadata__"):
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= size:  # the usual case: same length, rewritten in place
            f.seek(8)
            f.write(text.ljust(size, b" "))
            return
        f.seek(8 + size)
        data = f.read()
        size = -(-len(text) // 8) * 8  # keep the tensor data 8-byte aligned
        f.seek(0)
        f.write(size.to_bytes(8, "little") + text.ljust(size, b" ") + data)
