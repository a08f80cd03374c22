"""Float64 helpers shared by :mod:`osrm.subspace` and :mod:`osrm.diagnostics`."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from osrm.stats import LayerStats

StatsByTask = Mapping[str, Mapping[str, LayerStats]]


def moment(stats: Sequence[LayerStats], weighting: str = "equal", center: bool = False) -> Tensor:
    """(d, d) float64 second moment (or covariance) of several tasks' inputs.

    ``equal`` averages the per-task moments so a big task does not dominate; ``tokens`` pools
    all tokens.
    """
    if weighting == "tokens":
        pooled = sum(stats)
        return pooled.covariance() if center else pooled.second_moment()
    mats = [s.covariance() if center else s.second_moment() for s in stats]
    return torch.stack([m.double() for m in mats]).mean(0)


def other_moment(
    stats_by_task: StatsByTask,
    task: str,
    module: str,
    weighting: str = "equal",
    center: bool = False,
) -> Tensor:
    """``C_{-i}`` (d, d): the moment of every task but ``task`` at ``module``."""
    return moment([s[module] for t, s in stats_by_task.items() if t != task], weighting, center)


def fix_sign(rows: Tensor) -> Tensor:
    """Flip each row so its largest-magnitude entry is positive (eigh/SVD signs are arbitrary)."""
    idx = rows.abs().argmax(dim=1, keepdim=True)
    return rows * torch.sign(rows.gather(1, idx))


def random_orthonormal(rank: int, d: int, generator: torch.Generator) -> Tensor:
    """(rank, d) float64 rows drawn uniformly (QR of a Gaussian) with orthonormal rows."""
    q, _ = torch.linalg.qr(torch.randn(d, rank, generator=generator, dtype=torch.float64))
    return q.T.contiguous()


def seeded_generator(seed: int, *keys: str) -> torch.Generator:
    """A generator whose seed depends on ``seed`` and the keys (e.g. task and module)."""
    salt = zlib.crc32("/".join(keys).encode())
    return torch.Generator().manual_seed((seed * 1_000_003 + salt) % 2**63)
