"""OSRM subspaces: the row space each task's LoRA ``A`` starts in.

Zhang & Zhou, ACL 2025 (arXiv:2505.22934), §3: ``A_i = argmin_{A Aᵀ = I_r} tr(A C_{-i} Aᵀ)``,
whose minimiser (Ky Fan) is the r eigenvectors of the other tasks' input second moment
``C_{-i}`` with the smallest eigenvalues, as rows. One solver per mode of ``inits.MODES``
(method.md §2, §4, §7), registered in :data:`SOLVERS`:

- ``cov``: the paper; ``C_{-i}`` = mean over the other tasks j of ``xtx_j / count_j``.
- ``mean``: the reference code; null space of the stacked other-task mean inputs.
- ``contrast``: ours; top generalised eigenvectors of ``C_i v = μ (C_{-i} + δ I) v``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

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


# a solver: (stats_by_task, task, module, rank, options) -> (rank, d_in) orthonormal rows
Solver = Callable[[StatsByTask, str, str, int, SubspaceOptions], Tensor]


def cov_basis(
    stats_by_task: StatsByTask, task: str, module: str, rank: int, opts: SubspaceOptions
) -> Tensor:
    """The paper: eigenvectors of ``C_{-i}`` with the ``rank`` smallest eigenvalues, as rows."""
    c = other_moment(stats_by_task, task, module, opts.weighting, opts.center)
    _, vecs = torch.linalg.eigh(c.double())  # eigh returns ascending eigenvalues
    return fix_sign(vecs[:, :rank].T.contiguous())


def mean_basis(
    stats_by_task: StatsByTask, task: str, module: str, rank: int, opts: SubspaceOptions
) -> Tensor:
    """Orthonormal rows inside the null space of the other tasks' mean inputs (m, d).

    ``svd`` takes the trailing right-singular vectors as the reference code does; ``random``
    draws a seeded random orthonormal basis of the same null space.
    """
    means = torch.stack([s[module].mean() for t, s in stats_by_task.items() if t != task]).double()
    _, sing, vh = torch.linalg.svd(means, full_matrices=True)  # vh: (d, d)
    d = vh.shape[0]
    tol = sing.max().clamp_min(1e-300) * max(means.shape) * torch.finfo(torch.float64).eps
    null = vh[int((sing > tol).sum()) :]  # (d - rank(means), d)
    if rank > null.shape[0]:
        raise OsrmError(
            f"rank {rank} exceeds the null space of the other tasks' means "
            f"(dimension {null.shape[0]} of {d})"
        )
    if opts.basis == "svd":
        return fix_sign(vh[-rank:].contiguous())
    generator = seeded_generator(opts.seed, task, module)
    return fix_sign(random_orthonormal(rank, null.shape[0], generator) @ null)


def contrast_basis(
    stats_by_task: StatsByTask, task: str, module: str, rank: int, opts: SubspaceOptions
) -> Tensor:
    """Top generalised eigenvectors of ``C_i v = μ (C_{-i} + δ I) v``, orthonormalised.

    ``δ = ridge · tr(C_{-i}) / d``. Solved as a standard symmetric problem through the Cholesky
    factor ``L`` of ``C_{-i} + δ I``: eigenvectors ``w`` of ``L⁻¹ C_i L⁻ᵀ`` give ``v = L⁻ᵀ w``.
    """
    c_own = moment([stats_by_task[task][module]], center=opts.center).double()
    c_other = other_moment(stats_by_task, task, module, opts.weighting, opts.center).double()
    d = c_other.shape[0]
    delta = opts.ridge * torch.trace(c_other) / d
    chol = torch.linalg.cholesky(c_other + delta * torch.eye(d, dtype=torch.float64))
    half = torch.linalg.solve_triangular(chol, c_own, upper=False)  # L⁻¹ C_i
    whitened = torch.linalg.solve_triangular(chol, half.T, upper=False)  # L⁻¹ C_i L⁻ᵀ
    _, w = torch.linalg.eigh((whitened + whitened.T) / 2)
    v = torch.linalg.solve_triangular(chol.T, w[:, -rank:].flip(1), upper=True)  # (d, rank)
    q, _ = torch.linalg.qr(v)  # same span, orthonormal columns
    return fix_sign(q.T.contiguous())


# mode name (inits.MODES, which the config accepts) -> its solver
SOLVERS: dict[str, Solver] = {"cov": cov_basis, "mean": mean_basis, "contrast": contrast_basis}
if set(SOLVERS) != set(MODES):  # a mode named in one place only fails at import, not mid-run
    raise ImportError(f"subspace modes {sorted(MODES)} and solvers {sorted(SOLVERS)} differ")


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

    ``stats_by_task`` holds every task's statistics (``task`` included); ``weighting`` pools
    ``C_{-i}`` as the mean of per-task moments (``equal``) or of all tokens (``tokens``);
    ``center`` uses covariances instead of second moments; ``basis`` and ``seed`` apply to the
    ``mean`` mode, ``ridge`` (δ relative to ``tr(C_{-i})/d``) to ``contrast``; ``metas`` (per task)
    must agree on the base-weight fingerprint.

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
                solved[key] = SOLVERS[mode](stats_by_task, task, module, rank, opts)
            except OsrmError as e:
                raise OsrmError(f"task {task!r}, module {module}: {e}") from None
        out[module] = solved[key]
    return out


def osrm_directions(
    stats_by_task: StatsByTask,
    task: str,
    bases: Mapping[str, Tensor],
    k: int,
    mode: str = "cov",
    **options: object,
) -> dict[str, Tensor]:
    """The k best directions of each module's OSRM basis, the init's r rows first.

    ``bases`` are ``task``'s (r, d_in) inits from :func:`osrm_bases` with the same ``mode`` and
    ``options``. The solver is called again with rank k; its rows' components orthogonal to the
    init, orthonormalised (the k - r largest), follow the init's rows. For ``cov``, ``contrast``
    and ``mean``/``svd`` the rank-k rows contain the init's span, so these are the next k - r
    directions of the same eigen-problem; the init itself is never re-solved.

    Returns:
        module -> (k, d_in) float64 with orthonormal rows, ``[:r]`` equal to ``bases[module]``.
    """
    wide = osrm_bases(stats_by_task, task, k, mode, **options)  # type: ignore[arg-type]
    out: dict[str, Tensor] = {}
    for module, init in bases.items():
        init = init.double()
        rest = wide[module] - (wide[module] @ init.T) @ init  # (k, d_in), orthogonal to the init
        _, _, vh = torch.linalg.svd(rest, full_matrices=False)
        extra = vh[: k - init.shape[0]]
        extra = extra - (extra @ init.T) @ init  # once more against rounding
        q, _ = torch.linalg.qr(extra.T)
        out[module] = torch.cat([init, fix_sign(q.T)])
    return out


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
