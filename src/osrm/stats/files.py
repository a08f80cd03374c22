"""Statistics files: safetensors with provenance metadata, validated on load."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from osrm import __version__
from osrm.artifacts import check_listed, write_safetensors
from osrm.errors import OsrmError
from osrm.guards import check_finite
from osrm.stats.layer import MASK_POLICIES, LayerStats

FORMAT = "osrm.stats/1"


@dataclass(frozen=True)
class StatsMeta:
    """What a statistics file says about its provenance (stored as safetensors metadata)."""

    base_model: str
    fingerprint: str
    task: str
    n_examples: int
    n_tokens: int
    max_length: int | None = None
    mask: str = "attention"
    osrm_version: str = __version__


def _unique(stats: Mapping[str, LayerStats]) -> tuple[dict[str, LayerStats], dict[str, str]]:
    """Split into one entry per distinct accumulation plus an alias -> owner map."""
    owner_of: dict[int, str] = {}
    owned, aliases = {}, {}
    for name in sorted(stats):
        key = id(stats[name])
        if key in owner_of:
            aliases[name] = owner_of[key]
        else:
            owner_of[key] = name
            owned[name] = stats[name]
    return owned, aliases


def save_stats(path: str | Path, stats: Mapping[str, LayerStats], meta: StatsMeta) -> None:
    """Write statistics and their provenance to one safetensors file (atomically)."""
    owned, aliases = _unique(stats)
    tensors = {}
    for name, s in owned.items():
        tensors[f"{name}.xtx"] = s.xtx.contiguous()
        tensors[f"{name}.xsum"] = s.xsum.contiguous()
        tensors[f"{name}.count"] = torch.tensor(s.count, dtype=torch.int64)
    check_meta(path, meta)  # never write a file that load_stats would refuse
    check_finite(tensors, f"statistics {path}")
    metadata = {"format": FORMAT, "meta": json.dumps(asdict(meta)), "aliases": json.dumps(aliases)}
    write_safetensors(path, tensors, metadata)


def load_stats(
    path: str | Path, *, check_manifest: bool = True
) -> tuple[dict[str, LayerStats], StatsMeta]:
    """Read and validate a statistics file written by :func:`save_stats`.

    With ``check_manifest``, a file listed in its folder's ``osrm_manifest.json`` must match its
    sha256 (files that no manifest lists, e.g. shared ones, are checked for structure). A
    missing, corrupt, altered or inconsistent file is one :class:`OsrmError` line naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise OsrmError(f"{path}: statistics file not found")
    problem = check_listed(path) if check_manifest else None
    if problem:
        raise OsrmError(problem)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise OsrmError(f"{path}: not a readable safetensors file ({e})") from None
    if metadata.get("format") != FORMAT:
        raise OsrmError(
            f"{path}: metadata 'format' is {metadata.get('format')!r}, expected {FORMAT!r}"
        )
    meta = _parse_meta(path, metadata)
    aliases = _parse_json(path, metadata, "aliases")
    stats = {}
    for key in sorted(tensors):
        name, _, field = key.rpartition(".")
        if field == "xtx":
            stats[name] = _layer_from(path, name, tensors, meta)
    if not stats:
        raise OsrmError(f"{path}: holds no module statistics")
    for alias, owner in aliases.items():
        if owner not in stats:
            raise OsrmError(f"{path}: alias {alias!r} points to missing module {owner!r}")
        stats[alias] = stats[owner]
    return dict(sorted(stats.items())), meta


def _parse_json(path: Path, metadata: Mapping[str, str], key: str) -> dict:
    try:
        value = json.loads(metadata[key])
    except (KeyError, json.JSONDecodeError):
        raise OsrmError(f"{path}: metadata {key!r} is missing or not JSON") from None
    if not isinstance(value, dict):
        raise OsrmError(f"{path}: metadata {key!r} must be a JSON object")
    return value


def _parse_meta(path: Path, metadata: Mapping[str, str]) -> StatsMeta:
    raw = _parse_json(path, metadata, "meta")
    names = {f.name for f in fields(StatsMeta)}
    missing = sorted(names - raw.keys() - {"max_length", "mask", "osrm_version"})
    if missing:
        raise OsrmError(f"{path}: metadata 'meta' lacks fields {missing}")
    return check_meta(path, StatsMeta(**{k: v for k, v in raw.items() if k in names}))


def check_meta(path: str | Path, meta: StatsMeta) -> StatsMeta:
    """``meta`` if it describes usable statistics (checked on save and on load), else OsrmError."""
    for key in ("n_examples", "n_tokens"):  # statistics of no token are no statistics
        if not isinstance(getattr(meta, key), int) or getattr(meta, key) < 1:
            raise OsrmError(
                f"{path}: metadata {key!r} is {getattr(meta, key)!r}, expected a positive "
                "integer (statistics of at least one example and token)"
            )
    if meta.mask not in MASK_POLICIES:
        raise OsrmError(
            f"{path}: metadata 'mask' is {meta.mask!r}, expected one of {list(MASK_POLICIES)}"
        )
    return meta


def _layer_from(
    path: Path, name: str, tensors: Mapping[str, Tensor], meta: StatsMeta
) -> LayerStats:
    try:
        xtx, xsum, count = (tensors[f"{name}.{f}"] for f in ("xtx", "xsum", "count"))
    except KeyError as e:
        raise OsrmError(f"{path}: module {name!r} lacks tensor {e.args[0]!r}") from None
    d = xtx.shape[0] if xtx.ndim == 2 else -1
    if xtx.shape != (d, d) or xsum.shape != (d,) or count.shape != ():
        raise OsrmError(
            f"{path}: module {name!r} has shapes xtx {tuple(xtx.shape)}, xsum {tuple(xsum.shape)}, "
            f"count {tuple(count.shape)}; expected (d, d), (d,), ()"
        )
    if not (xtx.is_floating_point() and xsum.is_floating_point()) or count.is_floating_point():
        raise OsrmError(f"{path}: module {name!r} expected float xtx/xsum and an integer count")
    if not (torch.isfinite(xtx).all() and torch.isfinite(xsum).all()):
        raise OsrmError(f"{path}: module {name!r} holds NaN or Inf values")
    if int(count) < 0 or int(count) != meta.n_tokens:
        raise OsrmError(
            f"{path}: module {name!r} count {int(count)} != metadata n_tokens {meta.n_tokens}"
        )
    if not torch.allclose(
        xtx, xtx.T, rtol=1e-6, atol=1e-8 * float(xtx.diagonal().abs().max().clamp_min(1))
    ):
        raise OsrmError(f"{path}: module {name!r} xtx is not symmetric")
    return LayerStats(xtx, xsum, int(count))


def stats_digest(stats: Mapping[str, LayerStats]) -> str:
    """Short content hash of a statistics mapping (equal for byte-identical statistics)."""
    owned, aliases = _unique(stats)
    digest = hashlib.sha256(json.dumps(aliases, sort_keys=True).encode())
    for name, s in owned.items():
        digest.update(f"{name}:{s.count}".encode())
        digest.update(s.xtx.contiguous().numpy().tobytes())
        digest.update(s.xsum.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
