"""SVD helpers that exploit low rank: LoRA deltas have rank ≤ Σ r_i, far below d.

A dense SVD of a 2048 × 2048 delta costs about a second on two CPU cores; the deltas we merge
have rank 8-64, so a randomized range finder that *proves* it has the whole range (the sketch
comes out rank-deficient) gives the exact thin SVD at a few matmuls' cost (Halko, Martinsson
& Tropp, SIAM Review 2011). Full-rank inputs fall back to ``torch.linalg.svd``.
"""

from __future__ import annotations

import torch
from torch import Tensor

# singular values below RTOL · σ_max are float32 round-off of an exactly low-rank product
RTOL = 1e-6


def _sketch_seed(m: int, n: int) -> torch.Generator:
    # a fixed seed keeps every merge deterministic; the range found does not depend on it
    return torch.Generator().manual_seed(m * 1_000_003 + n)


def thin_svd(blocks: list[Tensor], rtol: float = RTOL) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Exact SVD of the column concatenation ``M = [X_1, …, X_k]``, numerical rank only.

    Each block is factored on its own, X_i = U_i S_i Vᴴ_i; then M = C · blockdiag(Vᴴ_i) with
    C = [U_1 S_1, …, U_k S_k] (m, Σ rank_i), and the SVD C = P Σ Qᴴ gives M's SVD directly
    (blockdiag(Vᴴ_i) has orthonormal rows), so M is never formed.

    Args:
        blocks: k tensors (m, n_i) sharing m.
        rtol: singular values ≤ rtol · σ_max are treated as zero and dropped.

    Returns:
        U (m, R), S (R,) and the k blocks of Vᴴ, (R, n_i) each, in float64, with
        M = U diag(S) [Vᴴ_1, …, Vᴴ_k] and R the numerical rank (0 for M = 0).
    """
    parts = [block_svd(b, rtol) for b in blocks]
    if len(parts) == 1:
        return parts[0][0], parts[0][1], [parts[0][2]]
    c = torch.cat([u * s for u, s, _ in parts], dim=1)  # (m, Σ rank_i)
    if c.shape[1] == 0:  # M = 0
        return c, c.new_zeros(0), [vh for _, _, vh in parts]
    p, sigma, qh = torch.linalg.svd(c, full_matrices=False)
    keep = _rank(sigma, rtol)
    qh_blocks = qh[:keep].split([s.numel() for _, s, _ in parts], dim=1)
    vhs = [q @ vh for q, (_, _, vh) in zip(qh_blocks, parts, strict=True)]
    return p[:, :keep], sigma[:keep], vhs


def block_svd(
    x: Tensor, rtol: float = RTOL, max_rank: int | None = None
) -> tuple[Tensor, Tensor, Tensor] | tuple[None, None, None]:
    """Exact thin SVD of one (m, n) matrix at its numerical rank: U (m, R), S (R,), Vᴴ (R, n).

    A Gaussian sketch Y = X Ω of width w has rank min(rank X, w) with probability 1, so a
    rank-deficient sketch proves range(Y) = range(X); the width doubles until it is.

    Args:
        max_rank: if set, return ``(None, None, None)`` instead of a full SVD once the rank is
            known to exceed it (callers then use the dense matrix directly).
    """
    m, n = x.shape
    x = x.double()  # float32 sketches blur the numerical rank
    width, gen = 32, _sketch_seed(m, n)
    while 2 * width <= min(m, n) and (max_rank is None or width <= 2 * max_rank):
        y = x @ torch.randn(n, width, generator=gen, dtype=x.dtype)
        q, s, _ = torch.linalg.svd(y, full_matrices=False)  # (m, width)
        rank = _rank(s, rtol)
        if rank == 0:  # x = 0
            return q[:, :0], s[:0], x.new_zeros(0, n)
        if rank < width:
            q = q[:, :rank]
            ub, s, vh = torch.linalg.svd(q.T @ x, full_matrices=False)  # x = q (qᵀ x)
            keep = _rank(s, rtol)
            return q @ ub[:, :keep], s[:keep], vh[:keep]
        width *= 2
    if max_rank is not None:
        return None, None, None
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    keep = _rank(s, rtol)
    return u[:, :keep], s[:keep], vh[:keep]


def _rank(s: Tensor, rtol: float) -> int:
    return int((s > rtol * s[0]).sum()) if s.numel() and s[0] > 0 else 0


def polar(x: Tensor, rtol: float = RTOL) -> Tensor:
    """The orthogonal polar factor P Qᴴ of x = P Σ Qᴴ (m, p): the nearest matrix with
    orthonormal columns (rows when p > m).

    For rank-deficient x only the directions with σ > rtol · σ_max are kept (the nearest
    partial isometry): the full factor would add arbitrary directions from the null space,
    e.g. when two tasks share a singular vector.
    """
    p, s, qh = torch.linalg.svd(x, full_matrices=False)
    keep = _rank(s, rtol)
    return p[:, :keep] @ qh[:keep]


def truncate(
    delta: Tensor, rank: int, exact: bool = False, niter: int = 4
) -> tuple[Tensor, Tensor, float]:
    """Best rank-``rank`` factors of ``delta`` (d_out, d_in), singular values split evenly.

    Args:
        delta: the dense matrix to factor.
        rank: target rank (clipped to min(d_out, d_in)).
        exact: full ``torch.linalg.svd`` (optimal, slow for big d); otherwise a randomized
            SVD with ``niter`` power iterations and 8 extra columns (near-optimal).

    Returns:
        B (d_out, rank), A (rank, d_in), and the relative error ‖delta − B A‖_F / ‖delta‖_F,
        computed exactly from the factors, whatever the SVD used.
    """
    x = delta.double()
    rank = min(rank, *x.shape)
    if exact or rank + 8 >= min(x.shape) // 2:
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
    else:
        # float32 is plenty for a truncation basis; the error below is computed in float64
        with torch.random.fork_rng():  # svd_lowrank draws from the global RNG
            torch.manual_seed(0)
            u, s, v = torch.svd_lowrank(delta.float(), q=rank + 8, niter=niter)
        u, s, vh = u.double(), s.double(), v.T.double()
    root = s[:rank].sqrt()
    b, a = u[:, :rank] * root, root[:, None] * vh[:rank]
    norm = float(torch.linalg.matrix_norm(x))
    err = float(torch.linalg.matrix_norm(x - b @ a)) / norm if norm > 0 else 0.0
    return b.to(delta.dtype), a.to(delta.dtype), err


def factored_truncate(b: Tensor, a: Tensor, rank: int) -> tuple[Tensor, Tensor, float]:
    """Best rank-``rank`` factors of ``b @ a`` without forming it (b: (d_out, R), a: (R, d_in)).

    Returns:
        B (d_out, rank), A (rank, d_in) and the relative Frobenius error, all exact.
    """
    qb, rb = torch.linalg.qr(b.double())
    qa, ra = torch.linalg.qr(a.double().T)
    u, s, vh = torch.linalg.svd(rb @ ra.T)  # (R, R): b @ a = qb (rb raᵀ) qaᵀ
    rank = min(rank, s.numel())
    root = s[:rank].sqrt()
    total = float(s.square().sum())
    err = (float(s[rank:].square().sum()) / total) ** 0.5 if total > 0 else 0.0
    out_b = (qb @ u[:, :rank]) * root
    out_a = root[:, None] * (vh[:rank] @ qa.T)
    return out_b.to(b.dtype), out_a.to(a.dtype), err
