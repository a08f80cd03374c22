"""The merge manifest: everything needed to know (and redo) how a merged artifact was made."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from osrm import __version__
from osrm.artifacts import MANIFEST_FILE as CONTENT_MANIFEST
from osrm.artifacts import verify_dir
from osrm.errors import OsrmError
from osrm.loaders import read_json
from osrm.merging.deltas import LoraDeltas, file_sha256
from osrm.merging.loading import coverage_gaps
from osrm.merging.registry import get_method, hyperparameters
from osrm.safety import check_name
from osrm.stats import stats_digest

MANIFEST_FILE = "osrm_merge.json"
FORMAT = "osrm.merge/1"


def _jsonable(value: object) -> object:
    if isinstance(value, torch.Generator):
        return "torch.Generator (user-supplied; not reproducible from this manifest)"
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return repr(value)


def source_record(source: Mapping[str, Tensor], task: str) -> dict:
    """Path, task, base model and sha256 of one task vector's source (when it has files)."""
    record: dict[str, object] = {"task": task}
    if isinstance(source, LoraDeltas):
        record.update(
            kind="lora",
            path=str(source.path),
            adapter_sha256=source.sha256,
            base_model=source.base_model,
        )
        if source.provenance.get("prompt"):  # a generative task: what answering it needs
            record["prompt"] = source.provenance["prompt"]
    else:
        record.update(kind=type(source).__name__, path=str(getattr(source, "path", "")) or None)
    return record


def task_names(sources: Sequence[Mapping[str, Tensor]], tasks: Sequence[str] | None) -> list[str]:
    """One unique, file-name-safe task name per source (given, or from the adapters)."""
    if tasks is not None:
        names = [str(t) for t in tasks]
        if len(names) != len(sources):
            raise OsrmError(f"tasks: expected {len(sources)} names (one per task vector)")
    else:
        names = [getattr(s, "task", None) or f"task{i}" for i, s in enumerate(sources)]
    for name in names:  # each becomes heads/<task>.safetensors
        check_name(name, "--tasks name" if tasks is not None else "task name")
    if len(set(names)) != len(names):
        names = [f"{i}_{n}" for i, n in enumerate(names)]  # two adapters from same-named dirs
    return names


def weights_record(weights: Sequence[float] | Tensor | Mapping | None, k: int) -> object:
    """k floats; per-module auto weights: one list when every module has the same λ, else
    module -> list."""

    def floats(w: object) -> list[float]:
        return [float(x) for x in torch.as_tensor(w, dtype=torch.float64).flatten()]

    if weights is None:
        return [1.0] * k
    if isinstance(weights, Mapping):
        per_module = {name: floats(w) for name, w in weights.items()}
        distinct = {tuple(w) for w in per_module.values()}
        return list(distinct.pop()) if len(distinct) == 1 else per_module
    return floats(weights)


def build_manifest(
    output: str,
    method: str,
    weights: Sequence[float] | Tensor | Mapping | None,
    hyperparameters: Mapping[str, object],
    sources: Sequence[Mapping[str, Tensor]],
    tasks: Sequence[str],
    extra: Mapping[str, object] | None = None,
) -> dict:
    """A JSON-ready record of one merge (method, weights, hyperparameters, source hashes)."""
    w = weights_record(weights, len(sources))
    bases = {getattr(s, "base_model", None) for s in sources} - {None}
    gaps = coverage_gaps(sources)
    manifest = {
        "format": FORMAT,
        "output": output,
        "method": method,
        "weights": w,
        "hyperparameters": _jsonable(dict(hyperparameters)),
        "base_model": next(iter(bases)) if len(bases) == 1 else None,
        "sources": [source_record(s, t) for s, t in zip(sources, tasks, strict=True)],
        "partial_modules": {n: [tasks[i] for i in missing] for n, missing in gaps.items()},
        "osrm_version": __version__,
    }
    manifest.update(_jsonable(dict(extra or {})))
    return manifest


def hp_record(method: str, hp: Mapping[str, object]) -> dict:
    """The hyperparameters actually used: defaults filled in, the effective seed stated."""
    record = hyperparameters(method)
    record.update(hp)
    if get_method(method).random and record.get("generator") is None:
        record.pop("generator", None)
        record["seed"] = record.get("seed") or 0
        record["seeding"] = "per module: torch.Generator seeded from sha256(f'{seed}/{name}')"
    return record


def stats_record(stats: Sequence[object] | None) -> list[dict]:
    """Where each task's statistics came from: file path and sha256, or a content digest."""
    records = []
    for s in stats or []:
        if isinstance(s, (str, Path)):
            records.append({"path": str(s), "sha256": file_sha256(s)})
        else:
            records.append({"digest": stats_digest(s[0] if isinstance(s, tuple) else s)})
    return records


def write_manifest(directory: Path, manifest: Mapping) -> None:
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a merged artifact; :class:`OsrmError` if missing or malformed, or if the
    directory's ``osrm_manifest.json`` (sha256 of every file) exists and does not match."""
    path = Path(directory) / MANIFEST_FILE
    if (Path(directory) / CONTENT_MANIFEST).is_file():
        problem = verify_dir(directory)
        if problem:
            raise OsrmError(problem)
    if not path.is_file():
        raise OsrmError(f"{path}: merge manifest not found (is this an osrm merge output?)")
    manifest = read_json(path, "the merge manifest")
    if manifest.get("format") != FORMAT:
        raise OsrmError(f"{path}: 'format' is not {FORMAT!r}")
    return manifest
