"""Retrofit: make an existing LoRA adapter merge-ready after training, from statistics only.

For adapter i and each module, A is replaced by the minimiser of

    E_{x~i} ‖B (A' − A) x‖²  +  μ · E_{x~others} ‖B A' x‖²

which, for B of full column rank, is ``A' = A Cᵢ (Cᵢ + μ C₋ᵢ + εI)⁻¹`` (the gradient
``BᵀB [(A' − A) Cᵢ + μ A' C₋ᵢ] = 0`` whatever BᵀB is, as long as it is invertible), with Cᵢ and
C₋ᵢ the per-token second moments of the task's and the other tasks' inputs (equal task
weighting). B, rank, alpha and the head are unchanged: the result is a plain LoRA adapter of the
same shape. ε is a small ridge relative to the mean eigenvalue (the moments may be singular).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from osrm import __version__
from osrm.artifacts import atomic_dir, seal_dir, write_safetensors
from osrm.diagnostics import response_energy
from osrm.errors import OsrmError
from osrm.guards import check_finite
from osrm.merging.deltas import CONFIG_FILE, WEIGHTS_FILE, LoraDeltas
from osrm.merging.grams import GramLookup, StatsSource, gram_lookup
from osrm.merging.loading import load_adapters
from osrm.merging.record import stats_record, task_names
from osrm.safety import PROVENANCE_FILE

RETROFIT_FILE = "osrm_retrofit.json"
RIDGE = 1e-6  # ε = RIDGE · tr(Cᵢ + μ C₋ᵢ) / d: keeps the solve defined, moves A by ~RIDGE


@dataclass(frozen=True)
class ModuleEffect:
    """What retrofitting did to one module's ΔW = s·B·A (energies over the statistics' tokens).

    ``kept``: 1 − E_i‖ΔW'x − ΔWx‖² / E_i‖ΔWx‖², the share of the own-task output kept (1: all);
    ``removed``: 1 − E_others‖ΔW'x‖² / E_others‖ΔWx‖², the share of the output on the other tasks'
    inputs removed (1: all). ``own`` and ``other`` are the original energies, to weight averages.
    """

    module: str
    kept: float
    removed: float
    own: float
    other: float


def retrofit_a(
    a: Tensor, c_own: Tensor, c_other: Tensor, mu: float, ridge: float = RIDGE
) -> Tensor:
    """``A Cᵢ (Cᵢ + μ C₋ᵢ + εI)⁻¹`` for A (r, d), C (d, d); μ = 0 returns A itself (exactly).

    Computed in float64 (C is symmetric positive semi-definite; the solve is of the transposed
    system) and returned in A's dtype.
    """
    if mu == 0:
        return a.clone()
    c_own, c_other = c_own.double(), c_other.double()
    system = c_own + mu * c_other
    d = system.shape[0]
    eps = ridge * float(torch.trace(system)) / d
    system = system + eps * torch.eye(d, dtype=torch.float64)
    # A' S = A Cᵢ  <=>  S A'ᵀ = Cᵢ Aᵀ (S symmetric)
    solved = torch.linalg.solve(system, c_own @ a.double().T)
    return solved.T.to(a.dtype).contiguous()


def module_effect(
    module: str, delta: Tensor, new_delta: Tensor, c_own: Tensor, c_other: Tensor
) -> ModuleEffect:
    """Kept own-task and removed other-task output of ``delta`` -> ``new_delta`` (d_out, d_in)."""
    own, other = response_energy(delta, c_own), response_energy(delta, c_other)
    moved = response_energy(new_delta.double() - delta.double(), c_own)
    left = response_energy(new_delta, c_other)
    kept = 1.0 - moved / own if own > 0 else float("nan")
    removed = 1.0 - left / other if other > 0 else float("nan")
    return ModuleEffect(module, kept, removed, own, other)


def overall_effect(effects: list[ModuleEffect]) -> dict[str, float]:
    """Over all modules: kept and removed with each module weighted by its original energy (so
    the numbers are those of the whole adapter's output summed over modules)."""
    own = sum(e.own for e in effects)
    other = sum(e.other for e in effects)
    kept = sum(e.kept * e.own for e in effects) / own if own > 0 else float("nan")
    removed = sum(e.removed * e.other for e in effects) / other if other > 0 else float("nan")
    return {"kept": kept, "removed": removed}


@dataclass(frozen=True)
class Retrofitted:
    """One retrofitted adapter, in memory until written: its new weights and what changed."""

    task: str
    source: LoraDeltas
    tensors: dict[str, Tensor]  # every tensor of the source file, lora_A replaced
    effects: list[ModuleEffect]


def check_mu(mu: float) -> float:
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu) or mu < 0:
        raise OsrmError(f"mu: expected a finite number >= 0, got {mu!r}")
    return float(mu)


def retrofit_sources(
    adapters: Sequence[LoraDeltas], grams: GramLookup, tasks: Sequence[str], mu: float
) -> list[Retrofitted]:
    """Every adapter's new lora_A per module, from the per-token moments of ``grams`` (one per
    adapter, in the adapters' order); nothing is written."""
    out = []
    for i, (adapter, task) in enumerate(zip(adapters, tasks, strict=True)):
        tensors = load_file(str(adapter.weights_file))
        effects = []
        for name, m in adapter.modules.items():
            moments = grams(name)  # (k, d, d): the k tasks' per-token second moments
            c_own = moments[i]
            c_other = torch.cat([moments[:i], moments[i + 1 :]]).mean(0)  # equal weighting
            # s·B (d_out, r), A (r, d_in) in float32, from the tensors already read
            b, a = tensors[m.key_b].float() * m.scale, tensors[m.key_a].float()
            new_a = retrofit_a(tensors[m.key_a], c_own, c_other, mu)
            check_finite([(f"{name} lora_A", new_a)], f"retrofitted adapter of {task}")
            tensors[m.key_a] = new_a
            effects.append(module_effect(name, b @ a, b @ new_a.float(), c_own, c_other))
        out.append(Retrofitted(task, adapter, tensors, effects))
    return out


def retrofit_adapters(
    adapter_dirs: Sequence[str | Path],
    stats: Sequence[StatsSource],
    mu: float,
    out_dir: str | Path,
    tasks: Sequence[str] | None = None,
) -> dict[str, dict]:
    """Retrofit k >= 2 adapters against each other's statistics into ``out_dir/<task>/``.

    Statistics are matched to adapters by task name and base model (never by position, see
    :func:`osrm.merging.grams.match_stats`); ``tasks`` names adapters that carry no osrm task.
    Everything is computed and checked before the first write; each output is a plain peft
    adapter (same config, B and head) with ``osrm_retrofit.json`` (μ, sources' and statistics'
    hashes, kept/removed per module and overall), sealed.

    Returns:
        task -> the record written to its ``osrm_retrofit.json``.
    """
    mu = check_mu(mu)
    seen: dict[Path, str] = {}
    for d in adapter_dirs:
        if Path(d).resolve() in seen:
            raise OsrmError(
                f"retrofit: adapter {d} is given twice (also as {seen[Path(d).resolve()]})"
            )
        seen[Path(d).resolve()] = str(d)
    adapters = load_adapters(adapter_dirs)
    if len(adapters) < 2:
        raise OsrmError("retrofit: expected 2 or more adapters (the others define what to avoid)")
    tasks = task_names(adapters, tasks)
    grams = gram_lookup(stats, adapters, tasks)
    done = retrofit_sources(adapters, grams, tasks, mu)
    records = {r.task: retrofit_record(r, mu, stats_record(stats)) for r in done}
    for r in done:
        write_retrofitted(Path(out_dir) / r.task, r, records[r.task])
    return records


def write_retrofitted(out: Path, r: Retrofitted, record: dict, keep: Sequence[str] = ()) -> None:
    """One retrofitted adapter into ``out`` (atomically, sealed): its weights, the source's
    config, provenance and the files named in ``keep``, and ``osrm_retrofit.json``."""
    with atomic_dir(out) as tmp:
        write_safetensors(tmp / WEIGHTS_FILE, r.tensors, {"format": "pt"})
        for name in (CONFIG_FILE, PROVENANCE_FILE, *keep):
            if (r.source.path / name).is_file():
                shutil.copyfile(r.source.path / name, tmp / name)
        (tmp / RETROFIT_FILE).write_text(json.dumps(record, indent=2) + "\n")
        seal_dir(tmp)


def retrofit_record(r: Retrofitted, mu: float, stats: list[dict]) -> dict:
    """The JSON record of one retrofitted adapter."""
    return {
        "task": r.task, "mu": mu, "ridge": RIDGE, "osrm_version": __version__,
        "source": {"path": str(r.source.path), "sha256": r.source.sha256}, "stats": stats,
        "overall": overall_effect(r.effects),
        "modules": {e.module: {"kept": e.kept, "removed": e.removed} for e in r.effects},
    }  # fmt: skip
