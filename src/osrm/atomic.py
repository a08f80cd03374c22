"""Atomic artifacts: write to a temporary sibling, then rename into place.

A crash or a failed write leaves either the old artifact or nothing, never half a file that a
later stage could trust. A failed write (disk full, file-size limit, read-only or missing folder;
an ``OSError`` or safetensors' own ``SafetensorError``) is reported as one
:class:`~osrm.errors.OsrmError` line naming the artifact, not the temporary path. A SIGKILL can
leave a hidden ``.<name>.<random>.tmp`` sibling behind; nothing ever reads those.

The checked loaders :func:`read_json`, :func:`read_yaml` and :func:`read_jsonl` are the one way
osrm reads back its own JSON/YAML artifacts: a missing, unreadable or corrupt file is one
``OsrmError`` line naming the file (and line), never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from safetensors import SafetensorError

from osrm.errors import OsrmError

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share_modes(path: Path) -> None:
    """Give a file (or every file below a folder) mode ``0666 & ~umask``: artifacts are shared
    files, but mkstemp and safetensors (through a private temporary file) create them 0600."""
    mode = 0o666 & ~_umask()
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    for f in files:
        if not f.is_symlink():
            os.chmod(f, mode)


def write_error(path: Path, err: OSError | SafetensorError) -> OsrmError:
    """One line for a failed write of ``path`` (the errno text, e.g. 'No space left on device')."""
    blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        return OsrmError(f"cannot write {path}: {blocked} is a file, not a directory")
    if isinstance(err, OSError):
        return OsrmError(f"cannot write {path}: {err.strerror or err}")
    # safetensors wraps the OS error in its own text: 'IoError(Os { ..., message: "File too
    # large" })'; keep the OS message when there is one
    found = re.search(r'message: "([^"]*)"|I/O error: (.+?) \(os error \d+\)', str(err))
    text = next(g for g in found.groups() if g) if found else " ".join(str(err).split())
    return OsrmError(f"cannot write {path}: {text}")


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
        yield tmp_path
        share_modes(tmp_path)  # mkstemp (and safetensors' own writer) make 0600
        os.replace(tmp_path, path)
    except SafetensorError as e:  # raised only by writes: reads happen before atomic_file
        raise write_error(path, e) from None
    except OSError as e:
        if _is_ours(e, tmp_path, path):
            raise write_error(path, e) from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


_KEEP: set[str] = set()  # outputs that atomic_dir must not replace (see keep_existing)


@contextmanager
def keep_existing(path: str | os.PathLike) -> Iterator[None]:
    """Within the block, :func:`atomic_dir` refuses to replace ``path`` should it appear while
    osrm writes it (``osrm merge --out`` without ``--force``: checked new at the start)."""
    key = os.path.abspath(path)
    _KEEP.add(key)
    try:
        yield
    finally:
        _KEEP.discard(key)


@contextmanager
def atomic_dir(path: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path``.

    An existing ``path`` is moved aside first and removed only after the new one is in place.
    ``replace=False`` (or :func:`keep_existing`): refuse (OsrmError) if ``path`` appeared while
    the folder was being written.
    """
    path = Path(path)
    replace = replace and os.path.abspath(path) not in _KEEP
    tmp = _sibling(path, tempfile.mkdtemp)
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        share_modes(tmp)
        if not replace and (path.exists() or path.is_symlink()):
            raise OsrmError(
                f"{path} appeared while osrm was writing it (another program?); "
                "it was left as it is, pass --force to replace it"
            )
        _swap_in(tmp, path)
    except SafetensorError as e:
        raise write_error(path, e) from None
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


# ------------------------------------------------------------------ checked loaders


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise OsrmError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise OsrmError(f"{path}: {what} is not UTF-8 text; {_REDO}") from None


_REDO = "delete it (or restore it) and re-run"


def _check_type(path: Path, what: str, data: Any, expect: type | None) -> Any:
    if expect is not None and not isinstance(data, expect):
        raise OsrmError(
            f"{path}: {what} should hold a JSON {_KIND.get(expect, expect.__name__)}, "
            f"got {type(data).__name__}; {_REDO}"
        )
    return data


_KIND = {dict: "object (mapping)", list: "array (list)"}


def read_json(path: str | os.PathLike, what: str, expect: type | None = dict) -> Any:
    """A JSON artifact osrm wrote (``what`` names it in errors), checked to be an ``expect``."""
    path = Path(path)
    text = _read_text(path, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise OsrmError(f"{path}:{e.lineno}: {what} is not valid JSON ({e.msg}); {_REDO}") from None
    return _check_type(path, what, data, expect)


def read_yaml(path: str | os.PathLike, what: str, expect: type | None = dict) -> Any:
    """A YAML file (an empty file reads as an empty ``expect``), checked to be an ``expect``."""
    path = Path(path)
    text = _read_text(path, what)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise OsrmError(f"{path}{where}: {what} is not valid YAML ({problem})") from None
    if data is None and expect is not None:
        data = expect()
    return _check_type(path, what, data, expect)


def read_jsonl(path: str | os.PathLike, what: str) -> list[tuple[int, dict]]:
    """``(line number, object)`` of every complete line of a JSON-lines artifact (none if the
    file is missing). An unterminated last line is what an interrupted append leaves: it is
    skipped with a warning (its content is computed again)."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise OsrmError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    *lines, partial = raw.split(b"\n")
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise OsrmError(
                f"{path}:{number}: not a {what} line ({type(e).__name__}); delete that line and "
                "re-run to compute it again"
            ) from None
        if not isinstance(data, dict):
            raise OsrmError(
                f"{path}:{number}: not a {what} line (a JSON {type(data).__name__}, expected an "
                "object); delete that line and re-run to compute it again"
            )
        out.append((number, data))
    if partial.strip():
        log.warning("%s: ignoring an incomplete last line (an interrupted write)", path)
    return out
