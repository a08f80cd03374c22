"""Safe loading: safetensors only, and names that cannot leave the run directory.

Pickle files (``.bin``, ``.pt``, ``.pkl``) can run arbitrary code when loaded, so no osrm format
uses them and no loader falls back to them: a peft adapter directory without
``adapter_model.safetensors`` is refused even though peft itself would read ``adapter_model.bin``.
Config values that become file names (task names, merge settings) must stay single path
components, so ``stats/<task>.safetensors`` and ``adapters/<init>/<task>`` stay inside ``run_dir``.
"""

from __future__ import annotations

import re
from pathlib import Path

from osrm.errors import OsrmError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PROVENANCE_FILE = "osrm_provenance.json"  # how osrm initialised an adapter (osrm.adapters)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,=+-]*")
MAX_NAME = 128


def check_name(name: object, field: str) -> str:
    """``name`` if it is usable as one file name inside the run directory, else OsrmError.

    The one rule for every name that becomes a file or folder name (task names, merge
    settings, the task of an adapter's provenance): no NUL or other control characters, no
    path separators, at most ``MAX_NAME`` characters (file systems allow 255 bytes, and
    names get suffixes such as ``.safetensors``).
    """
    if isinstance(name, str) and len(name) > MAX_NAME:
        raise OsrmError(f"{field} {name[:20]!r}...: {len(name)} characters, at most {MAX_NAME}")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise OsrmError(
            f"{field} {name!r}: expected a file-name-safe name (letters, digits, _ . , = + -, "
            "not starting with '.' and without '..' or '/')"
        )
    return name


def ensure_inside(root: str | Path, path: str | Path, field: str) -> Path:
    """``path`` if it resolves inside ``root``, else OsrmError naming ``field``."""
    root_r, path_r = Path(root).resolve(), Path(path).resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise OsrmError(f"{field}: {path} would be written outside the run directory {root}")
    return Path(path)


def require_safetensors(adapter_dir: str | Path) -> Path:
    """The adapter's ``adapter_model.safetensors``; refuse directories holding only pickles."""
    directory = Path(adapter_dir)
    weights = directory / ADAPTER_WEIGHTS
    if weights.is_file():
        return weights
    if not directory.is_dir():
        raise OsrmError(f"{directory}: adapter directory not found")
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise OsrmError(
            f"{weights} not found; refusing {pickles[0]}: pickle files can run code when loaded, "
            "osrm reads adapters from safetensors only"
        )
    raise OsrmError(f"{weights}: adapter weights not found")
