"""Opening k adapters for one merge: the checks that make merging them meaningful."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import Tensor

from osrm.artifacts import MANIFEST_FILE, verify_dir
from osrm.errors import OsrmError
from osrm.merging.deltas import LoraDeltas


def load_adapters(adapter_dirs: Sequence[str | Path], validate: bool = True) -> list[LoraDeltas]:
    """Open k adapters and check they can be merged: same base model, same module shapes.

    Raises:
        OsrmError: k = 0, a bad adapter (or one that no longer matches its osrm manifest),
            different ``base_model_name_or_path`` or osrm base fingerprints, or one module with
            different shapes in two adapters.
    """
    if isinstance(adapter_dirs, (str, Path)) or len(adapter_dirs) == 0:
        raise OsrmError("adapters: expected a non-empty list of adapter directories")
    sources = [LoraDeltas(d) for d in adapter_dirs]
    if validate:
        for s in sources:
            problem = verify_dir(s.path) if (s.path / MANIFEST_FILE).is_file() else None
            if problem:
                raise OsrmError(problem)
            s.validate()
    check_same_base(sources)
    return sources


def _modules(source: LoraDeltas) -> frozenset[str]:
    return frozenset(name.removesuffix(".weight") for name in source)


def base_difference(a: LoraDeltas, b: LoraDeltas) -> str | None:
    """Why two osrm adapters cannot share a base model, from their recorded base weight hashes.

    Per-module hashes (provenance ``base_fingerprints``) are compared on the modules both
    adapters target; the older single hash (``base_fingerprint``, over all targeted weights)
    only when both target the same modules (other targets give another hash of the same base).
    """
    pa, pb = a.provenance, b.provenance
    ma, mb = pa.get("base_fingerprints") or {}, pb.get("base_fingerprints") or {}
    if isinstance(ma, dict) and isinstance(mb, dict) and ma and mb:
        for module in sorted(ma.keys() & mb.keys()):
            if ma[module] != mb[module]:
                return (
                    f"module {module!r} has different base weights (fingerprint "
                    f"{mb[module]!r}; {a.path} has {ma[module]!r})"
                )
        return None
    fa, fb = pa.get("base_fingerprint"), pb.get("base_fingerprint")
    if fa and fb and fa != fb and _modules(a) == _modules(b):
        return (
            f"the target modules have different base weights (base_fingerprint {fb!r}; "
            f"{a.path} has {fa!r})"
        )
    return None


def check_same_base(sources: Sequence[LoraDeltas]) -> None:
    """Raise :class:`OsrmError` unless all adapters plausibly share one base model."""
    first = sources[0]
    for other in sources[1:]:
        a, b = first.base_model, other.base_model
        if a is not None and b is not None and a != b:
            raise OsrmError(
                f"{other.path}: base_model_name_or_path is {b!r} but {first.path} has {a!r}; "
                "adapters must come from the same base model"
            )
        why = base_difference(first, other)
        if why is not None:
            raise OsrmError(f"{other.path}: {why}; adapters must come from the same base model")
        if other.fan_in_fan_out != first.fan_in_fan_out:
            raise OsrmError(f"{other.path}: fan_in_fan_out differs from {first.path}")
    seen: dict[str, tuple[tuple[int, int], Path]] = {}
    for source in sources:
        for name in source:
            shape = source.shape(name)
            if name in seen and seen[name][0] != shape:
                raise OsrmError(
                    f"{source.path}: {name} has ΔW shape {shape} but {seen[name][1]} has "
                    f"{seen[name][0]}; adapters must come from the same base model"
                )
            seen.setdefault(name, (shape, source.path))


def coverage_gaps(sources: Sequence[Mapping[str, Tensor]]) -> dict[str, list[int]]:
    """Modules present in only some sources -> indices of the sources that lack them."""
    names = sorted(set().union(*sources))
    gaps = {n: [i for i, s in enumerate(sources) if n not in s] for n in names}
    return {n: missing for n, missing in gaps.items() if missing}
