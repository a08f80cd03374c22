"""Content manifests: which files make up an artifact, and their sha256.

An artifact directory (an adapter, a merged model) is *sealed* inside its atomic write: its
``osrm_manifest.json`` lists every file with its sha256, so a directory is trusted only when the
manifest exists and every listed file still hashes the same. Single-file artifacts (statistics)
are listed in the ``osrm_manifest.json`` of the folder that holds them, updated after the file
is in place: a crash in between leaves a file without an entry, which is not trusted either.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from osrm.atomic import atomic_file, read_json
from osrm.errors import OsrmError

MANIFEST_FILE = "osrm_manifest.json"
FORMAT = "osrm.manifest/1"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_entries(directory: str | Path) -> dict[str, str] | None:
    """``relative path -> sha256`` of a folder's manifest; None if absent or malformed."""
    path = Path(directory) / MANIFEST_FILE
    try:
        data = read_json(path, "osrm manifest")
    except OsrmError:  # absent or malformed: the callers say what that means for them
        return None
    if data.get("format") != FORMAT:
        return None
    files = data.get("files")
    if not isinstance(files, dict):
        return None
    return {str(k): str(v) for k, v in files.items()}


def _write(directory: Path, entries: Mapping[str, str]) -> Path:
    path = directory / MANIFEST_FILE
    payload = {"format": FORMAT, "files": dict(sorted(entries.items()))}
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
    return _write(directory, entries)


def seal_files(paths: Iterable[str | Path]) -> None:
    """Record files (all in one folder) in that folder's manifest, keeping the other entries."""
    paths = [Path(p) for p in paths]
    if not paths:
        return
    directory = paths[0].parent
    entries = read_entries(directory) or {}
    entries.update({p.name: file_sha256(p) for p in paths})
    _write(directory, entries)


def _mismatch(directory: Path, entries: Mapping[str, str], names: Iterable[str]) -> str | None:
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
    """None if the directory's manifest lists ``required`` and every listed file matches.

    Returns:
        Why the directory cannot be trusted, as one line (``None`` when it can).
    """
    directory = Path(directory)
    entries = read_entries(directory)
    if entries is None:
        return f"{directory / MANIFEST_FILE} is missing or malformed"
    return _mismatch(directory, entries, [*required, *(n for n in entries if n not in required)])


def verify_file(path: str | Path) -> str | None:
    """None if ``path`` is listed in its folder's manifest with a matching sha256."""
    path = Path(path)
    entries = read_entries(path.parent)
    if entries is None:
        return f"{path.parent / MANIFEST_FILE} is missing or malformed"
    return _mismatch(path.parent, entries, [path.name])


def check_listed(path: str | Path) -> str | None:
    """For files that may come from elsewhere: a problem only if a manifest lists ``path``
    with another sha256 (a file no manifest mentions is not judged)."""
    path = Path(path)
    entries = read_entries(path.parent)
    if not entries or path.name not in entries:
        return None
    return _mismatch(path.parent, entries, [path.name])
