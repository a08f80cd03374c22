"""Sufficient statistics of one module's inputs: additive, so combinations are exact."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from osrm.errors import OsrmError

MASK_POLICIES = ("attention", "none")


@dataclass(frozen=True)
class LayerStats:
    """Sufficient statistics of one module's inputs over one set of tokens.

    Attributes:
        xtx: (d_in, d_in) float64, Σ x xᵀ.
        xsum: (d_in,) float64, Σ x.
        count: number of tokens (rows x).
    """

    xtx: Tensor
    xsum: Tensor
    count: int

    def __add__(self, other: LayerStats) -> LayerStats:
        if not isinstance(other, LayerStats):
            return NotImplemented
        if other.xtx.shape != self.xtx.shape:
            raise OsrmError(f"cannot add statistics of d_in {other.d_in} to d_in {self.d_in}")
        return LayerStats(self.xtx + other.xtx, self.xsum + other.xsum, self.count + other.count)

    def __radd__(self, other: object) -> LayerStats:
        # lets sum(list_of_stats) start from 0
        return self if other == 0 else self.__add__(other)  # type: ignore[arg-type]

    @property
    def d_in(self) -> int:
        return self.xtx.shape[0]

    def second_moment(self) -> Tensor:
        """(d_in, d_in) uncentred second moment E[x xᵀ]."""
        return self.xtx / max(self.count, 1)

    def mean(self) -> Tensor:
        """(d_in,) mean input E[x]."""
        return self.xsum / max(self.count, 1)

    def covariance(self) -> Tensor:
        """(d_in, d_in) centred covariance E[x xᵀ] − μ μᵀ."""
        mu = self.mean()
        return self.second_moment() - torch.outer(mu, mu)
