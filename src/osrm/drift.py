"""How A moves during training (the budget axis of train.checkpoints, method.md §6).

Drift: principal angles between the row space of A at a step and at step 0 (Björck & Golub,
1973). Energies: the captured input energy of A's row space, tr(Q C Qᵀ) / tr(C) with Q its
orthonormal basis, comparable with :func:`osrm.diagnostics.subspace_report` (orthonormal A at
init). Interference: :func:`osrm.diagnostics.interference_matrix` of the adapters at that step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from osrm.diagnostics import energy, interference_matrix, summarise_interference
from osrm.linalg import StatsByTask, moment, other_moment

# singular values below RANK_RTOL · σ_max are taken as 0: A is stored in float32 (eps 6e-8)
RANK_RTOL = 1e-6
Factors = Mapping[str, Mapping[str, tuple[Tensor, Tensor]]]  # task -> module -> (s·B, A)
KEYS = ("interference", "drift_deg", "drift_max_deg", "own_energy", "other_energy")


def row_space(a: Tensor) -> Tensor:
    """Orthonormal basis (k, d) float64 of the row space of A (r, d); k = numerical rank of A
    (singular values above ``RANK_RTOL`` · the largest), so an all-zero A gives (0, d)."""
    _, s, vh = torch.linalg.svd(a.double(), full_matrices=False)
    keep = s > RANK_RTOL * s.max() if s.numel() and s.max() > 0 else s > math.inf
    return vh[keep]


def principal_angles(a0: Tensor, a1: Tensor) -> Tensor:
    """Principal angles (radians, ascending, float64) between the row spaces of A0 (r0, d) and
    A1 (r1, d): min(k0, k1) of them for row spaces of dimensions k0, k1 (:func:`row_space`), so
    a rank-deficient A contributes its actual span and an all-zero A gives an empty tensor.

    Small angles come from sines (arccos of a cosine near 1 loses half the digits), the others
    from cosines.
    """
    q0, q1 = row_space(a0), row_space(a1)
    if q0.shape[0] < q1.shape[0]:  # q1: the smaller space, every one of its directions has one
        q0, q1 = q1, q0
    cos = torch.linalg.svdvals(q1 @ q0.T).clamp(0, 1)  # (k1,) descending
    sin = torch.linalg.svdvals(q1 - (q1 @ q0.T) @ q0).clamp(0, 1).flip(0)  # (k1,) ascending
    from_cos, from_sin = torch.arccos(cos), torch.arcsin(sin)
    return torch.where(from_cos < math.pi / 4, from_sin, from_cos)


def subspace_energy(a: Tensor, c: Tensor) -> float:
    """tr(Q C Qᵀ) / tr(C) for Q the orthonormal row space of A (r, d), C (d, d): independent of
    A's scale and basis (0 for an all-zero A)."""
    return energy(row_space(a), c)


@dataclass(frozen=True)
class Snapshot:
    """Every task's adapter at one point of training: ``factors`` task -> module -> (s·B
    (d_out, r), A (r, d_in)); ``task_steps`` where a task's own step differs from ``step``
    (final adapters trained for ``train.epochs``); ``matrix``: their interference ratios if
    already computed (``interference.json`` for the final adapters), else computed here."""

    step: int
    factors: Factors
    task_steps: Mapping[str, int] = field(default_factory=dict)
    matrix: Mapping[str, Mapping[str, float]] | None = None


def _module_row(a0: Tensor, a: Tensor, c_own: Tensor, c_other: Tensor) -> dict[str, float]:
    deg = torch.rad2deg(principal_angles(a0, a))
    nan = float("nan")
    return {
        "drift_deg": float(deg.mean()) if deg.numel() else nan,
        "drift_max_deg": float(deg.max()) if deg.numel() else nan,
        "own_energy": subspace_energy(a, c_own),
        "other_energy": subspace_energy(a, c_other),
    }


def _mean(rows: Sequence[Mapping[str, float | None]], keys: Sequence[str]) -> dict:
    out = {}
    for key in keys:
        values = [r[key] for r in rows]
        out[key] = None if None in values else sum(values) / len(values)
    return out


def _interference(snap: Snapshot, stats_by_task: StatsByTask) -> tuple[float, dict[str, float]]:
    """The mean off-diagonal ratio (as :func:`summarise_interference`) and, per adapter j, the
    mean of its ratios on the other tasks' inputs."""
    matrix = snap.matrix
    if matrix is None:
        deltas = {t: {m: b @ a for m, (b, a) in f.items()} for t, f in snap.factors.items()}
        matrix = interference_matrix(deltas, stats_by_task)
    per_task = {}
    for j, row in matrix.items():
        off = [v for t, v in row.items() if t != j]
        per_task[j] = sum(off) / len(off) if off else float("nan")
    return summarise_interference({"_": matrix})["_"], per_task


def _snapshot_rows(
    snap: Snapshot,
    start: Factors,
    moments: Mapping[str, Mapping[str, tuple[Tensor, Tensor]]],
    interference: Mapping[str, float],
) -> list[dict]:
    """Per task of one snapshot: module-averaged drift from ``start`` and energies."""
    rows = []
    for task, modules in snap.factors.items():
        mods = [
            _module_row(start[task][module][1], a, *moments[task][module])
            for module, (_, a) in sorted(modules.items())
        ]
        step = snap.task_steps.get(task, snap.step)
        row = {"step": step, "task": task, "interference": interference.get(task)}
        rows.append({**row, **_mean(mods, KEYS[1:])})
    return rows


def budget_diagnostics(
    init: str,
    snapshots: Sequence[Snapshot],
    stats_by_task: StatsByTask,
    *,
    weighting: str = "equal",
    center: bool = False,
) -> tuple[list[dict], list[dict]]:
    """Drift, energies and interference of one init's adapters at every snapshot.

    Args:
        snapshots: one with ``step == 0`` (A as initialised, B = 0): the drift's reference.
        weighting, center: form C_{-i} and C_i as :func:`osrm.diagnostics.subspace_report`.

    Returns:
        ``(rows, per_task)``: per step, ``{"init", "step", *KEYS}`` averaged over tasks and
        modules (``drift_max_deg``: the mean of each module's largest angle), and the same per
        ``"task"`` (its adapter's mean ratio on the other tasks' inputs); ``interference`` is
        None at step 0 (B = 0: no response at all).
    """
    by_step = {s.step: s for s in snapshots}
    if 0 not in by_step:
        raise ValueError(f"no snapshot at step 0 (A as initialised) among steps {sorted(by_step)}")
    start = by_step[0].factors
    moments = {  # C_i and C_{-i} (d_in, d_in) per task and module, the same at every step
        task: {
            module: (
                moment([stats_by_task[task][module]], center=center),
                other_moment(stats_by_task, task, module, weighting, center),
            )
            for module in modules
        }
        for task, modules in start.items()
    }
    rows, per_task = [], []
    for snap in sorted(snapshots, key=lambda s: s.step):
        mean, by_task = None, {}
        if snap.step > 0:
            mean, by_task = _interference(snap, stats_by_task)
        mine = _snapshot_rows(snap, start, moments, by_task)
        per_task += [{"init": init, **r} for r in mine]
        rows.append(
            {"init": init, "step": snap.step, "interference": mean, **_mean(mine, KEYS[1:])}
        )
    return rows, per_task
