"""Artifacts: written atomically (a temporary sibling renamed into place) and sealed by sha256.

A crash or a failed write leaves the old artifact or nothing, never half a file that a later
stage could trust. A failed write (an ``OSError``: disk full, file-size limit, read-only or
missing folder; or safetensors' own ``SafetensorError``) is one :class:`~osrm.errors.OsrmError`
line naming the artifact, not the temporary path. A SIGKILL can leave a hidden
``.<name>.<random>.tmp`` sibling behind; nothing ever reads those.

A sealed directory (an adapter, a merged model) holds ``osrm_manifest.json``, written last inside
its atomic write, with the sha256 of every file: it is trusted only while every listed file still
hashes the same. Single files (statistics) are listed in their folder's manifest once in place:
a crash in between leaves a file without an entry, which is not trusted either.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from safetensors import SafetensorError

from osrm.errors import OsrmError, one_line
from osrm.loaders import read_json

MANIFEST_FILE = "osrm_manifest.json"
_MANIFEST_FORMAT = "osrm.manifest/1"


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
    text = next(g for g in found.groups() if g) if found else one_line(err)
    return OsrmError(f"cannot write {path}: {text}")


def _is_ours(err: OSError, tmp: Path, path: Path) -> bool:
    """Whether an OSError is about writing this artifact (not, say, reading an input)."""
    if err.filename is None:  # write()/flush() errors such as ENOSPC carry no file name
        return True
    name = os.fspath(err.filename)
    return name == os.fspath(path) or name.startswith(os.fspath(tmp))


@contextmanager
def _staged(
    path: Path,
    make: Callable[..., str],
    install: Callable[[Path], None],
    discard: Callable[[Path], None],
) -> Iterator[Path]:
    """Yield a new temporary sibling of ``path`` (``make``: mkstemp-like); after the block,
    ``install`` it (a rename); ``discard`` whatever is left. A failed write is one OsrmError
    naming ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(make(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise write_error(path, e) from None
    try:
        yield tmp
        share_modes(tmp)  # mkstemp (and safetensors' own writer) make 0600
        install(tmp)
    except SafetensorError as e:  # raised only by writes: reads happen before the block
        raise write_error(path, e) from None
    except OSError as e:
        if _is_ours(e, tmp, path):
            raise write_error(path, e) from None
        raise
    finally:
        discard(tmp)


def _mkstemp(**kwargs) -> str:
    fd, tmp = tempfile.mkstemp(**kwargs)
    os.close(fd)
    return tmp


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``."""
    path = Path(path)
    discard = partial(Path.unlink, missing_ok=True)
    with _staged(path, _mkstemp, partial(os.replace, dst=path), discard) as tmp:
        yield tmp


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

    def install(tmp: Path) -> None:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
        if not replace and (path.exists() or path.is_symlink()):
            raise OsrmError(
                f"{path} appeared while osrm was writing it (another program?); "
                "it was left as it is, pass --force to replace it"
            )
        _swap_in(tmp, path)

    discard = partial(shutil.rmtree, ignore_errors=True)
    with _staged(path, tempfile.mkdtemp, install, discard) as tmp:
        yield tmp


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


# ------------------------------------------------------------------ sha256 seals


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _entries(directory: Path) -> dict[str, str] | None:
    """``relative path -> sha256`` of a folder's manifest; None if absent or malformed."""
    try:
        data = read_json(directory / MANIFEST_FILE, "osrm manifest")
    except OsrmError:  # absent or malformed: the callers say what that means for them
        return None
    files = data.get("files")
    if data.get("format") != _MANIFEST_FORMAT or not isinstance(files, dict):
        return None
    return {str(k): str(v) for k, v in files.items()}


def _write_manifest(directory: Path, entries: Mapping[str, str]) -> Path:
    path = directory / MANIFEST_FILE
    payload = {"format": _MANIFEST_FORMAT, "files": dict(sorted(entries.items()))}
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def seal_dir(directory: str | Path) -> Path:
    """Write ``directory/osrm_manifest.json`` listing every file below it (call it last)."""
    directory = Path(directory)
    entries = {
        p.relative_to(directory).as_posix(): file_sha256(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }
    return _write_manifest(directory, entries)


def seal_files(paths: Iterable[str | Path]) -> None:
    """Record files (all in one folder) in that folder's manifest, keeping the other entries."""
    paths = [Path(p) for p in paths]
    if not paths:
        return
    directory = paths[0].parent
    entries = _entries(directory) or {}
    entries.update({p.name: file_sha256(p) for p in paths})
    _write_manifest(directory, entries)


def _mismatch(
    directory: Path, entries: Mapping[str, str] | None, names: Iterable[str]
) -> str | None:
    """Why ``names`` of ``directory`` cannot be trusted, as one line (None when they can)."""
    if entries is None:
        return f"{directory / MANIFEST_FILE} is missing or malformed"
    for name in names:
        if name not in entries:
            return f"{directory / name} is not listed in {directory / MANIFEST_FILE}"
        target = directory / name
        if not target.is_file():
            return f"{target} is listed in {MANIFEST_FILE} but missing"
        if file_sha256(target) != entries[name]:
            return f"{target} does not match the sha256 in {MANIFEST_FILE}"
    return None


def verify_dir(directory: str | Path, required: Iterable[str] = ()) -> str | None:
    """Why the directory cannot be trusted, as one line: its manifest is missing or malformed,
    does not list ``required``, or a listed file does not match (``None`` when it can)."""
    directory = Path(directory)
    entries = _entries(directory)
    names = [*required, *(n for n in entries or () if n not in required)]
    return _mismatch(directory, entries, names)


def verify_file(path: str | Path) -> str | None:
    """None if ``path`` is listed in its folder's manifest with a matching sha256."""
    path = Path(path)
    return _mismatch(path.parent, _entries(path.parent), [path.name])


def check_listed(path: str | Path) -> str | None:
    """For files that may come from elsewhere: a problem only if a manifest lists ``path``
    with another sha256 (a file no manifest mentions is not judged)."""
    path = Path(path)
    entries = _entries(path.parent)
    return _mismatch(path.parent, entries, [path.name]) if path.name in (entries or {}) else None
