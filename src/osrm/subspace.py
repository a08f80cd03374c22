"""OSRM subspaces: the row space each task's LoRA ``A`` starts in.

Zhang & Zhou, ACL 2025 (arXiv:2505.22934), §3: ``A_i = argmin_{A Aᵀ = I_r} tr(A C_{-i} Aᵀ)``,
whose minimiser (Ky Fan) is the r eigenvectors of the other tasks' input second moment
``C_{-i}`` with the smallest eigenvalues, as rows. Three modes (method.md §2, §4, §7):

- ``cov``: the paper; ``C_{-i}`` = mean over the other tasks j of ``xtx_j / count_j``.
- ``mean``: the reference code; null space of the stacked other-task mean inputs.
- ``contrast``: ours; top generalised eigenvectors of ``C_i v = μ (C_{-i} + δ I) v``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from osrm.diagnostics import subspace_report, summarise_report
from osrm.errors import OsrmError
from osrm.inits import MEAN_BASES, MODES, WEIGHTINGS
from osrm.linalg import (
    StatsByTask,
    fix_sign,
    moment,
    other_moment,
    random_orthonormal,
    seeded_generator,
)
from osrm.stats import StatsMeta

__all__ = [
    "MODES",
    "SubspaceOptions",
    "check_stats",
    "contrast_basis",
    "mean_null_basis",
    "osrm_bases",
    "smallest_eigvecs",
    "subspace_report",
    "summarise_report",
]


def smallest_eigvecs(c: Tensor, rank: int) -> Tensor:
    """(rank, d): eigenvectors of symmetric ``c`` with the smallest eigenvalues, as rows."""
    _, vecs = torch.linalg.eigh(c.double())  # eigh returns ascending eigenvalues
    return fix_sign(vecs[:, :rank].T.contiguous())


def mean_null_basis(means: Tensor, rank: int, basis: str, generator: torch.Generator) -> Tensor:
    """(rank, d) orthonormal rows inside the null space of the rows of ``means`` (m, d).

    ``svd`` takes the trailing right-singular vectors as the reference code does; ``random``
    draws a seeded random orthonormal basis of the same null space.
    """
    means = means.double()
    _, sing, vh = torch.linalg.svd(means, full_matrices=True)  # vh: (d, d)
    d = vh.shape[0]
    tol = sing.max().clamp_min(1e-300) * max(means.shape) * torch.finfo(torch.float64).eps
    null = vh[int((sing > tol).sum()) :]  # (d - rank(means), d)
    if rank > null.shape[0]:
        raise OsrmError(
            f"rank {rank} exceeds the null space of the other tasks' means "
            f"(dimension {null.shape[0]} of {d})"
        )
    if basis == "svd":
        return fix_sign(vh[-rank:].contiguous())
    return fix_sign(random_orthonormal(rank, null.shape[0], generator) @ null)


def contrast_basis(c_own: Tensor, c_other: Tensor, rank: int, ridge: float) -> Tensor:
    """(rank, d): top generalised eigenvectors of ``C_i v = μ (C_{-i} + δ I) v``, orthonormalised.

    ``δ = ridge · tr(C_{-i}) / d``. Solved as a standard symmetric problem through the Cholesky
    factor ``L`` of ``C_{-i} + δ I``: eigenvectors ``w`` of ``L⁻¹ C_i L⁻ᵀ`` give ``v = L⁻ᵀ w``.
    """
    c_own, c_other = c_own.double(), c_other.double()
    d = c_other.shape[0]
    delta = ridge * torch.trace(c_other) / d
    chol = torch.linalg.cholesky(c_other + delta * torch.eye(d, dtype=torch.float64))
    half = torch.linalg.solve_triangular(chol, c_own, upper=False)  # L⁻¹ C_i
    whitened = torch.linalg.solve_triangular(chol, half.T, upper=False)  # L⁻¹ C_i L⁻ᵀ
    _, w = torch.linalg.eigh((whitened + whitened.T) / 2)
    v = torch.linalg.solve_triangular(chol.T, w[:, -rank:].flip(1), upper=True)  # (d, rank)
    q, _ = torch.linalg.qr(v)  # same span, orthonormal columns
    return fix_sign(q.T.contiguous())


@dataclass(frozen=True)
class SubspaceOptions:
    """How to build ``C_{-i}`` and solve for A (see :func:`osrm_bases`)."""

    mode: str = "cov"
    weighting: str = "equal"
    center: bool = False
    basis: str = "svd"
    ridge: float = 1e-2
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, valid in (
            ("mode", self.mode, MODES),
            ("weighting", self.weighting, WEIGHTINGS),
            ("basis", self.basis, MEAN_BASES),
        ):
            if value not in valid:
                raise OsrmError(f"{name} {value!r}: expected one of {list(valid)}")
        if not self.ridge > 0:
            raise OsrmError(f"ridge {self.ridge!r}: expected a positive number")


def osrm_bases(
    stats_by_task: StatsByTask,
    task: str,
    rank: int,
    mode: str = "cov",
    *,
    weighting: str = "equal",
    center: bool = False,
    basis: str = "svd",
    ridge: float = 1e-2,
    seed: int = 0,
    metas: Mapping[str, StatsMeta] | None = None,
) -> dict[str, Tensor]:
    """OSRM initial ``A`` for every module of ``task``.

    Args:
        stats_by_task: task -> module -> statistics (all tasks, ``task`` included).
        task: the task whose adapter is being initialised.
        rank: LoRA rank r.
        mode: ``cov`` (paper), ``mean`` (reference code) or ``contrast`` (ours).
        weighting: ``equal`` (mean of per-task moments) or ``tokens`` (pooled) for ``C_{-i}``.
        center: use covariances (``xtx/n − μμᵀ``) instead of second moments.
        basis: for ``mean`` mode, ``svd`` (reference) or ``random`` (seeded, same null space).
        ridge: for ``contrast`` mode, δ relative to ``tr(C_{-i})/d``.
        seed: for ``basis="random"``.
        metas: optional file metadata per task; base-weight fingerprints must agree.

    Returns:
        module -> (rank, d_in) float64 with orthonormal rows. Modules sharing one accumulation
        (q and v of a layer) get the same tensor.
    """
    opts = SubspaceOptions(mode, weighting, center, basis, ridge, seed)
    modules = check_stats(stats_by_task, task, rank, metas)
    out: dict[str, Tensor] = {}
    solved: dict[tuple[int, ...], Tensor] = {}
    for module in modules:
        key = tuple(id(s[module]) for s in stats_by_task.values())
        if key not in solved:
            try:
                solved[key] = _solve(stats_by_task, task, module, rank, opts)
            except OsrmError as e:
                raise OsrmError(f"task {task!r}, module {module}: {e}") from None
        out[module] = solved[key]
    return out


def _solve(
    stats_by_task: StatsByTask, task: str, module: str, rank: int, opts: SubspaceOptions
) -> Tensor:
    if opts.mode == "cov":
        return smallest_eigvecs(
            other_moment(stats_by_task, task, module, opts.weighting, opts.center), rank
        )
    if opts.mode == "mean":
        means = torch.stack([s[module].mean() for t, s in stats_by_task.items() if t != task])
        return mean_null_basis(means, rank, opts.basis, seeded_generator(opts.seed, task, module))
    c_own = moment([stats_by_task[task][module]], center=opts.center)
    c_other = other_moment(stats_by_task, task, module, opts.weighting, opts.center)
    return contrast_basis(c_own, c_other, rank, opts.ridge)


def check_stats(
    stats_by_task: StatsByTask,
    task: str,
    rank: int,
    metas: Mapping[str, StatsMeta] | None = None,
) -> list[str]:
    """Validate the inputs of :func:`osrm_bases`; return the sorted module names."""
    tasks = list(stats_by_task)
    if task not in stats_by_task:
        raise OsrmError(f"unknown task {task!r}; statistics are for {tasks}")
    if len(tasks) < 2:
        raise OsrmError(f"OSRM needs statistics of at least 2 tasks, got {tasks}")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise OsrmError(f"rank {rank!r}: expected a positive integer")
    modules = sorted(stats_by_task[task])
    for other in tasks:
        diff = sorted(set(modules) ^ set(stats_by_task[other]))
        if diff:
            raise OsrmError(
                f"tasks {task!r} and {other!r} have statistics for different modules: {diff[:4]}"
            )
    for module in modules:
        dims = {t: s[module].d_in for t, s in stats_by_task.items()}
        if len(set(dims.values())) > 1:
            raise OsrmError(f"module {module}: input dimensions differ between tasks {dims}")
        if rank > dims[task]:
            raise OsrmError(f"rank {rank} exceeds d_in {dims[task]} of module {module}")
    if metas is not None:
        prints = {t: metas[t].fingerprint for t in tasks if t in metas}
        if len(set(prints.values())) > 1:
            raise OsrmError(f"statistics come from different base weights (fingerprints {prints})")
    return modules
