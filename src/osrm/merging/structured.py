"""Methods that look beyond single entries: KnOTS and TSV (SVDs), RegMean (input Gram matrices).

Registered in ``METHODS`` where they are defined, with the signature and input handling of
:mod:`osrm.merging.methods`; their extra inputs are explicit keywords. SVDs
use :mod:`osrm.merging.spectral`, which finds the (low) numerical rank of LoRA deltas exactly
without a dense SVD of the whole matrix.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch import Tensor

from osrm.errors import OsrmError
from osrm.merging.checks import check_choice, check_optional_fraction, check_unit
from osrm.merging.primitives import agreeing_mean, trim_magnitude, weighted_sum
from osrm.merging.registry import register
from osrm.merging.spectral import block_svd, polar, thin_svd

KNOTS_INNER = ("ties", "task_arithmetic")
GRAM_KINDS = ("mean", "sum")  # regmean: per-token second moments, or the paper's raw sums


def _positive(hp: Mapping[str, Any], weights: Tensor) -> None:
    """RegMean weights scale Gram matrices: they must be positive."""
    if (weights <= 0).any():
        raise OsrmError(f"regmean: weights must be positive, got {weights.tolist()}")


@register("knots", inner=partial(check_choice, valid=KNOTS_INNER))
def knots(
    deltas: Tensor,
    weights: Tensor,
    *,
    inner: str = "ties",
    density: float = 0.2,
    scale: float = 1.0,
    majority_sign: str = "total",
) -> Tensor:
    """Merge in the shared basis of a joint SVD: [Δ_1 … Δ_k] = U S [V_1ᵀ … V_kᵀ].

    Stoica et al., "Model merging with SVD to tie the KnOTS", ICLR 2025. Task i's coordinates
    S V_iᵀ (R, d_in) are merged with ``inner`` (``"ties"`` uses ``density`` and
    ``majority_sign``; ``"task_arithmetic"`` makes KnOTS equal plain TA), then ΔW = U · merged.
    Deltas are concatenated along the input axis, as in the paper. Non-matrix parameters fall
    back to the inner method on the raw deltas.
    """

    def merge(coords: Tensor, w: Tensor) -> Tensor:  # the inner method: TIES or TA
        if inner == "task_arithmetic":
            return scale * weighted_sum(coords, w)
        return scale * agreeing_mean(trim_magnitude(coords, density), w, majority_sign, False)

    if deltas.ndim != 3:
        return merge(deltas, weights)
    u, s, vhs = thin_svd(list(deltas))  # float64, numerical rank R <= Σ rank(Δ_i)
    coords = torch.stack([s[:, None] * vh for vh in vhs])  # (k, R, d_in)
    return u @ merge(coords, weights.double())


@register("tsv", fraction=check_optional_fraction)
def tsv(
    deltas: Tensor, weights: Tensor, *, fraction: float | None = None, scale: float = 1.0
) -> Tensor:
    """Task Singular Vectors merge (TSV-M): low-rank per task, decorrelate, sum, × λ.

    Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model Merging",
    CVPR 2025. Each Δ_i keeps its top ⌊fraction · min(d_out, d_in)⌋ singular triplets
    (default fraction 1/k; never more than its numerical rank); the stacked U's and V's are
    replaced by their orthogonal polar factors; ΔW = λ · U⊥ diag(w_i σ_i) V⊥ᵀ.
    Non-matrix parameters fall back to task arithmetic.
    """
    k = deltas.shape[0]
    fraction = 1.0 / k if fraction is None else fraction
    if deltas.ndim != 3:
        return scale * weighted_sum(deltas, weights)
    keep = max(1, int(fraction * min(deltas.shape[1:])))
    us, sigmas, vhs = [], [], []
    for i in range(k):
        u, s, vh = block_svd(deltas[i])  # exact, at Δ_i's numerical rank
        us.append(u[:, :keep])
        sigmas.append(weights[i].double() * s[:keep])
        vhs.append(vh[:keep])
    u = torch.cat(us, dim=1)  # (d_out, Σ kept)
    if u.shape[1] == 0:
        return torch.zeros(deltas.shape[1:])
    v = torch.cat(vhs, dim=0).T  # (d_in, Σ kept)
    merged = polar(u) @ (torch.cat(sigmas)[:, None] * polar(v).T)
    return scale * merged


@register(
    "regmean",
    needs_stats=True,
    alpha=check_unit,
    gram=partial(check_choice, valid=GRAM_KINDS),
    check=_positive,
)
def regmean(
    deltas: Tensor,
    weights: Tensor,
    *,
    grams: Tensor,
    alpha: float = 0.9,
    scale: float = 1.0,
    gram: str = "mean",
) -> Tensor:
    """RegMean in ΔW space: ΔW = λ · (Σ w_i ΔW_i G̃_i)(Σ w_i G̃_i)⁻¹.

    Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models", ICLR 2023.
    With W_i = W_0 + ΔW_i the paper's W = (Σ G_i)⁻¹ Σ G_i W_i (for y = xW) becomes
    W_0 + (Σ ΔW_i G_i)(Σ G_i)⁻¹ in our (d_out, d_in) layout: the base weight is not needed.
    G̃_i = α G_i + (1 − α) diag(G_i) (off-diagonals scaled by ``alpha`` in [0, 1]).

    Args:
        grams: (k, d_in, d_in) input Gram matrices of this module, one per task, used as
            given.
        weights: must be positive (they weight the Gram matrices).
        gram: which Gram matrices a merge from statistics files builds (``iter_merged`` asks
            the statistics for this kind): ``"mean"`` (default), the per-token second moments
            X_iᵀX_i / n_i, so every task counts equally whatever its calibration size; or
            ``"sum"``, the raw X_iᵀX_i of the paper, which weights task i by its n_i tokens.
    """
    grams = torch.as_tensor(grams)
    k, d_out, d_in = deltas.shape if deltas.ndim == 3 else (0, 0, 0)
    if deltas.ndim != 3 or tuple(grams.shape) != (k, d_in, d_in):
        raise OsrmError(f"grams: expected shape {(k, d_in, d_in)}, got {tuple(grams.shape)}")
    g = grams.double()
    g = alpha * g + (1 - alpha) * torch.diag_embed(torch.diagonal(g, dim1=1, dim2=2))
    g = g * weights.double()[:, None, None]
    num = torch.zeros(d_out, d_in, dtype=torch.float64)  # Σ ΔW_i G̃_i
    for i in range(k):
        u, s, vh = block_svd(deltas[i], max_rank=min(d_out, d_in) // 4)  # low rank: cheap product
        num += (u * s) @ (vh @ g[i]) if u is not None else deltas[i].double() @ g[i]
    den = g.sum(0)  # symmetric (d_in, d_in)
    chol, info = torch.linalg.cholesky_ex(den)
    if int(info) == 0:
        merged = torch.cholesky_solve(num.T, chol).T
    else:  # singular Σ G̃ (e.g. dead inputs): minimum-norm solution
        merged = num @ torch.linalg.pinv(den, hermitian=True)
    return scale * merged
