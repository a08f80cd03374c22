"""Activation statistics for merging: the files of `osrm stats` matched to adapters by task name
and base model (never by position), and the per-module Gram matrices RegMean and auto weights
read from them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from osrm.errors import OsrmError
from osrm.merging.deltas import LoraDeltas
from osrm.stats import LayerStats, StatsMeta, load_stats

StatsSource = str | Path | Mapping[str, LayerStats] | tuple[Mapping[str, LayerStats], StatsMeta]


def _load_one(source: StatsSource) -> tuple[Mapping[str, LayerStats], StatsMeta | None, str]:
    if isinstance(source, (str, Path)):
        stats, meta = load_stats(source)
        return stats, meta, str(source)
    if isinstance(source, tuple):
        return source[0], source[1], "statistics"
    return source, None, "statistics"


Loaded = tuple[Mapping[str, LayerStats], StatsMeta | None, str]


def match_stats(
    loaded: Sequence[Loaded], adapters: Sequence[LoraDeltas], tasks: Sequence[str] | None = None
) -> list[Loaded]:
    """Statistics in the adapters' order, matched by identity, never by position.

    Each adapter's task (``tasks``, else its provenance task or folder name) must have exactly
    one statistics entry whose ``StatsMeta.task`` names it; entries without metadata (plain
    mappings) are taken in the given order. Then each pair must describe one base model: the
    same ``base_model`` name, and the same base-weight hash where both record one (the
    statistics' ``fingerprint`` against the adapter's provenance, for the same module set).
    """
    names = list(tasks) if tasks is not None else [a.task for a in adapters]
    named = all(meta is not None for _, meta, _ in loaded)
    # files that name their task are matched below (a missing one is named there)
    if (len(loaded) != len(adapters) and not named) or len(names) != len(adapters):
        raise OsrmError(f"stats: expected {len(adapters)} entries (one per adapter)")
    if named:
        by_task: dict[str, Loaded] = {}
        for entry in loaded:
            if entry[1].task in by_task:
                raise OsrmError(
                    f"{entry[2]}: statistics of task {entry[1].task!r} are given twice "
                    f"(also {by_task[entry[1].task][2]})"
                )
            by_task[entry[1].task] = entry
        if len(set(names)) != len(names):
            raise OsrmError(f"tasks {names}: two adapters share a task; name them with --tasks")
        missing = [t for t in names if t not in by_task]
        if missing:
            raise OsrmError(
                f"stats: no statistics for task {missing[0]!r} (adapter "
                f"{adapters[names.index(missing[0])].path}); the files are for tasks "
                f"{sorted(by_task)}"
            )
        extra = sorted(set(by_task) - set(names))
        if extra:
            raise OsrmError(
                f"{by_task[extra[0]][2]}: statistics of task {extra[0]!r}, which no adapter has "
                f"(the adapters' tasks: {names})"
            )
        loaded = [by_task[t] for t in names]
    for (stats, meta, label), adapter in zip(loaded, adapters, strict=True):
        if meta is None:
            continue
        if adapter.base_model and meta.base_model != adapter.base_model:
            raise OsrmError(
                f"{label}: statistics of base model {meta.base_model!r}, but adapter "
                f"{adapter.path} was trained on {adapter.base_model!r}"
            )
        recorded = adapter.provenance.get("base_fingerprint")
        same_modules = set(stats) == {n.removesuffix(".weight") for n in adapter}
        if recorded and same_modules and meta.fingerprint != recorded:
            raise OsrmError(
                f"{label}: statistics of other base weights (fingerprint {meta.fingerprint!r}) "
                f"than adapter {adapter.path} was trained on ({recorded!r})"
            )
    return list(loaded)


class GramLookup:
    """Name ``<module>.weight`` -> (k, d_in, d_in) float64 Gram matrices of k tasks.

    ``lookup(name)`` gives the per-token second moments G_i = X_iᵀX_i / n_i (osrm's default,
    ``gram="mean"``); ``lookup(name, "sum")`` the raw sums X_iᵀX_i the RegMean paper uses.
    Per-token means make every task count equally whatever its calibration sample size (a tool
    setting, not a task importance), as in OSRM (method.md §3), so task weights stay the only
    knob and α's diagonal shrinkage acts on one scale for every task; raw sums weight task i
    by its n_i tokens.
    """

    def __init__(self, loaded: Sequence[Loaded], adapters: Sequence[LoraDeltas] | None):
        self.loaded = list(loaded)
        self.adapters = adapters

    def __call__(self, name: str, gram: str = "mean") -> Tensor | None:
        module = name.removesuffix(".weight")
        found = [s.get(module) for s, _, _ in self.loaded]
        if any(f is None for f in found):
            if self.adapters is not None:
                pairs = zip(self.loaded, found, strict=True)
                label = next(lbl for (_, _, lbl), f in pairs if f is None)
                raise OsrmError(f"{label}: no statistics for module {module!r}")
            return None
        d_in = next((a.shape(name)[1] for a in self.adapters or () if name in a), found[0].d_in)
        for (_, _, label), f in zip(self.loaded, found, strict=True):
            if f.d_in != d_in:
                raise OsrmError(
                    f"{label}: module {module!r} has input dimension {f.d_in}, not {d_in}; "
                    "statistics of another base model?"
                )
        if gram == "sum":
            return torch.stack([f.xtx.double() for f in found])
        return torch.stack([f.xtx.double() / max(f.count, 1) for f in found])


def gram_lookup(
    stats: Sequence[StatsSource],
    adapters: Sequence[LoraDeltas] | None = None,
    tasks: Sequence[str] | None = None,
) -> GramLookup:
    """Gram matrices per module for RegMean, from one statistics entry per task.

    Args:
        stats: one statistics file (or loaded statistics) per task, in any order: files are
            matched to the adapters by task name and base model (:func:`match_stats`).
        adapters: if given, every LoRA module must have statistics (else OsrmError), and
            statistics of another base model (name or weights) are rejected.
        tasks: the adapters' task names (default: their provenance task or folder name).

    Returns:
        A :class:`GramLookup`: ``lookup(name)`` per-token means, ``lookup(name, "sum")`` sums.
    """
    loaded = [_load_one(s) for s in stats]
    if adapters is not None:
        loaded = match_stats(loaded, adapters, tasks)
    return GramLookup(loaded, adapters)
