"""The four building blocks of the sparsifying merges, on stacked task deltas.

TIES (Yadav et al., NeurIPS 2023), DARE (Yu et al., ICML 2024), magnitude pruning and Model
Breadcrumbs are compositions of these: trim by magnitude or drop at random, elect a sign per
entry, then average the entries that agree with it. Every function takes ``deltas`` of shape
(k, *shape), one slice per task, and never modifies its inputs (but :func:`agreeing_mean`,
which weights the temporaries it is given in place).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# below this size a plain topk is as fast as bracketing the threshold
_SELECT_MIN = 1 << 16
_SAMPLE = 1 << 15


def top_mask(values: Tensor, keep: int) -> Tensor:
    """Boolean mask of the ``keep`` largest entries of a 1-D tensor: exactly ``keep`` of them.

    The same set as ``values.topk(keep)`` (up to ties at the boundary), found faster: the
    quantiles of a fixed random sample bracket the threshold, everything above the bracket is
    in, and only the narrow band inside it is ranked. A missed bracket falls back to topk.
    """
    n = values.numel()
    mask = torch.zeros(n, dtype=torch.bool, device=values.device)
    if keep <= 0 or keep >= n:
        return mask.fill_(keep >= n)
    if n < _SELECT_MIN:
        return mask.index_fill_(0, values.topk(keep, sorted=False).indices, True)
    gen = torch.Generator().manual_seed(n)  # fixed: results never depend on the draw
    sample = values[torch.randint(n, (_SAMPLE,), generator=gen)].sort().values
    q = 1 - keep / n  # the threshold's quantile
    margin = 6 * math.sqrt(q * (1 - q) / _SAMPLE) + 4 / _SAMPLE
    lo = sample[max(int((q - margin) * _SAMPLE), 0)]
    hi = sample[min(int((q + margin) * _SAMPLE) + 1, _SAMPLE - 1)]
    above = values > hi
    need = keep - int(above.sum())
    band = ((values >= lo) & ~above).nonzero().squeeze(1)
    if need < 0 or band.numel() < need:
        return mask.index_fill_(0, values.topk(keep, sorted=False).indices, True)
    return above.index_fill_(0, band[values[band].topk(need, sorted=False).indices], True)


def trim_magnitude(deltas: Tensor, density: float, skip_top: float = 0.0) -> Tensor:
    """Keep each task's ⌊density·n⌋ largest-magnitude entries, zero the rest.

    Args:
        deltas: (k, *shape) task deltas; each slice is trimmed on its own (per module).
        density: fraction of the n entries of one slice that is kept.
        skip_top: fraction of the largest entries removed first (Model Breadcrumbs' outliers);
            the kept band is then the next ⌊density·n⌋ entries.

    Returns:
        (k, *shape) trimmed deltas (a new tensor).
    """
    flat = deltas.reshape(deltas.shape[0], -1)  # (k, n)
    n = flat.shape[1]
    top, keep = int(skip_top * n), int(density * n)
    if top == 0 and keep >= n:
        return deltas.clone()
    out = torch.zeros_like(flat)
    for task, row in zip(out, flat, strict=True):  # one task at a time: O(n) temporaries
        magnitude = row.abs()
        mask = top_mask(magnitude, top + keep)
        if top:
            mask &= ~top_mask(magnitude, top)
        torch.mul(row, mask, out=task)
    return out.reshape(deltas.shape)


def drop_random(deltas: Tensor, density: float, generator: torch.Generator) -> Tensor:
    """DARE: keep each entry with probability ``density`` and rescale survivors by 1/density.

    The mask is drawn with ``torch.bernoulli`` in task order, the same draws as
    ``peft.utils.merge_utils.random_pruning`` makes from a global RNG with the same seed.

    Returns:
        (k, *shape) dropped and rescaled deltas (a new tensor; its expectation is ``deltas``).
    """
    if density >= 1:
        return deltas.clone()
    out = torch.empty_like(deltas)
    p = torch.full_like(deltas[0], density)
    for task, delta in zip(out, deltas, strict=True):  # task order: the draws peft makes
        torch.bernoulli(p, generator=generator, out=task)
        task.mul_(delta).div_(density)
    return out


def elect_sign(deltas: Tensor, method: str = "total") -> Tensor:
    """TIES sign election: +1 or −1 per entry, the sign of the summed mass (ties go to +1).

    Args:
        deltas: (k, *shape), already weighted so negated tasks vote with their effective sign.
        method: ``"total"`` (sign of Σ deltas) or ``"frequency"`` (sign of Σ sign(deltas)).

    Returns:
        (*shape) tensor of ±1 in the deltas' dtype.
    """
    votes = deltas.sum(0) if method == "total" else deltas.sign().sum(0)
    return torch.where(votes >= 0, 1.0, -1.0).to(deltas.dtype)


def disjoint_mean(deltas: Tensor, sign: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean over the tasks whose (non-zero) entry agrees with the elected sign, else 0.

    Args:
        deltas: (k, *shape), already weighted (δ_i = w_i Δ_i).
        sign: (*shape) elected ±1.
        weights: ``None``: divide by the number of agreeing tasks (TIES paper, peft). (k,)
            task weights: divide by the sum of the agreeing tasks' weights (mergekit's
            ``normalize: true``), i.e. a weighted mean of the agreeing Δ_i; an entry whose
            agreeing weights sum to 0 is divided by 1.

    Returns:
        (*shape) merged entries: Σ_agreeing δ_i / #agreeing, or / Σ_agreeing w_i.
    """
    # one (k, *shape) temporary: entries agreeing with the ±1 sign become > 0, the rest <= 0
    aligned = (deltas * sign).clamp_(min=0)
    total = aligned.sum(0)
    agree = aligned.sign_()  # (k, *shape) 1 where task i agrees, else 0
    if weights is None:
        return total.mul_(sign).div_(agree.sum(0).clamp_(min=1))
    divisor = torch.tensordot(weights.to(agree.dtype), agree, dims=1)
    divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    return total.mul_(sign).div_(divisor)


def agreeing_mean(kept: Tensor, weights: Tensor, method: str, normalize: bool) -> Tensor:
    """TIES' last steps on trimmed or dropped deltas: weight, elect signs, disjoint mean.

    Args:
        kept: (k, *shape) deltas the caller owns: they are weighted in place (δ_i = w_i Δ_i),
            so the sign is elected on the weighted deltas (a negated task votes with its
            effective sign).
        method: sign election, see :func:`elect_sign`.
        normalize: divide by the agreeing tasks' summed weights instead of their number.

    Returns:
        (*shape) merged entries, see :func:`disjoint_mean`.
    """
    weighted = kept.mul_(weights.to(kept.dtype).reshape(-1, *([1] * (kept.ndim - 1))))
    sign = elect_sign(weighted, method)
    return disjoint_mean(weighted, sign, weights if normalize else None)


def weighted_sum(deltas: Tensor, weights: Tensor) -> Tensor:
    """Σ_i w_i δ_i over the task axis, as one (*shape) tensor (no (k, *shape) temporary)."""
    return torch.tensordot(weights.to(deltas.dtype), deltas, dims=1)
