"""Diagnostics of OSRM subspaces (method.md §6): captured input energies and task overlaps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from osrm.linalg import StatsByTask, moment, other_moment, random_orthonormal, seeded_generator


@dataclass(frozen=True)
class EnergyRow:
    """Input energy captured by one task's A at one module, relative to the trace.

    ``other`` = tr(A C_{-i} Aᵀ) / tr(C_{-i}) (what OSRM minimises); ``own`` = tr(A C_i Aᵀ) / tr(C_i)
    (what the adapter can still see of its own task); ``*_random`` the same for a random
    orthonormal A of the same rank (expected r/d).
    """

    task: str
    module: str
    other: float
    own: float
    other_random: float
    own_random: float


@dataclass(frozen=True)
class OverlapRow:
    """Subspace overlap ‖A_a A_bᵀ‖²_F / r between two tasks at one module (1 = same subspace)."""

    task_a: str
    task_b: str
    module: str
    overlap: float


def energy(a: Tensor, c: Tensor) -> float:
    """tr(A C Aᵀ) / tr(C) for A (r, d) and C (d, d)."""
    a = a.double()
    return float(torch.einsum("rd,de,re->", a, c.double(), a) / torch.trace(c.double()))


def subspace_report(
    stats_by_task: StatsByTask,
    bases_by_task: Mapping[str, Mapping[str, Tensor]],
    *,
    weighting: str = "equal",
    center: bool = False,
    seed: int = 0,
) -> tuple[list[EnergyRow], list[OverlapRow]]:
    """Energies of each task's A (task -> module -> (r, d_in) orthonormal rows) against its own
    and the other tasks' inputs, and overlaps. ``weighting`` and ``center`` form ``C_{-i}`` as
    for :func:`osrm.subspace.osrm_bases`; ``seed`` draws the random reference A."""
    rows = []
    for task, bases in bases_by_task.items():
        for module, a in sorted(bases.items()):
            c_other = other_moment(stats_by_task, task, module, weighting, center)
            c_own = moment([stats_by_task[task][module]], center=center)
            rand = random_orthonormal(a.shape[0], a.shape[1], seeded_generator(seed, task, module))
            rows.append(
                EnergyRow(
                    task,
                    module,
                    energy(a, c_other),
                    energy(a, c_own),
                    energy(rand, c_other),
                    energy(rand, c_own),
                )
            )
    tasks = list(bases_by_task)
    overlaps = []
    for i, ta in enumerate(tasks):
        for tb in tasks[i + 1 :]:
            for module in sorted(set(bases_by_task[ta]) & set(bases_by_task[tb])):
                a, b = bases_by_task[ta][module].double(), bases_by_task[tb][module].double()
                value = float((a @ b.T).square().sum() / min(a.shape[0], b.shape[0]))
                overlaps.append(OverlapRow(ta, tb, module, value))
    return rows, overlaps


def summarise_report(
    energies: Sequence[EnergyRow], overlaps: Sequence[OverlapRow]
) -> list[dict[str, float | str]]:
    """Per task, the module-averaged energies and the mean overlap with the other tasks."""
    out = []
    for task in dict.fromkeys(r.task for r in energies):
        mine = [r for r in energies if r.task == task]
        pairs = [o.overlap for o in overlaps if task in (o.task_a, o.task_b)]
        row: dict[str, float | str] = {"task": task}
        for key in ("other", "own", "other_random", "own_random"):
            row[key] = sum(getattr(r, key) for r in mine) / len(mine)
        row["overlap"] = sum(pairs) / len(pairs) if pairs else float("nan")
        out.append(row)
    return out


def response_energy(delta: Tensor, second_moment: Tensor) -> float:
    """E‖ΔW x‖² over a task's tokens: tr(ΔW C ΔWᵀ) for ΔW (d_out, d_in), C (d_in, d_in)."""
    delta = delta.double()
    return float(((delta @ second_moment.double()) * delta).sum())


def interference_matrix(
    deltas_by_task: Mapping[str, Mapping[str, Tensor]], stats_by_task: StatsByTask
) -> dict[str, dict[str, float]]:
    """Cross-task interference ratios (method.md §6), over all modules together.

    ``ratio[j][t] = ‖ΔW_j X_tᵀ‖_F / ‖ΔW_t X_tᵀ‖_F``: how strongly adapter j responds to task t's
    inputs, relative to task t's own adapter (diagonal = 1). Computed exactly from the statistics:
    ``‖ΔW X_tᵀ‖²_F = tr(ΔW X_tᵀX_t ΔWᵀ)``, summed over modules; per-token second moments are
    used, so the number of tokens cancels. ``deltas_by_task``: adapter's task -> module -> ΔW
    (d_out, d_in).
    """
    energy_of: dict[str, dict[str, float]] = {}
    for j, deltas in deltas_by_task.items():
        energy_of[j] = {}
        for t, stats in stats_by_task.items():
            missing = sorted(set(deltas) - set(stats))
            if missing:
                raise ValueError(f"no statistics of task {t!r} for modules {missing[:3]}")
            energy_of[j][t] = sum(
                response_energy(d, stats[m].second_moment()) for m, d in deltas.items()
            )
    own = {t: energy_of[t][t] for t in deltas_by_task if t in stats_by_task}
    return {
        j: {t: (energy_of[j][t] / own[t]) ** 0.5 if own[t] > 0 else float("nan") for t in own}
        for j in deltas_by_task
    }


def summarise_interference(matrices: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict:
    """Per init, the mean off-diagonal ratio (lower = adapters disturb each other less)."""
    out = {}
    for init, m in matrices.items():
        off = [v for j, row in m.items() for t, v in row.items() if j != t]
        out[init] = sum(off) / len(off) if off else float("nan")
    return out
