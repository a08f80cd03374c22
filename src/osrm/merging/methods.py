"""Merge methods in ΔW space: one signature; registered in :mod:`osrm.merging.registry`.

Every method merges the k task deltas of **one** module:
``fn(deltas (k, d_out, d_in), weights (k,), **hp) -> ΔW (d_out, d_in)``, in the deltas' dtype
(computed in float32 or float64). Element-wise methods accept any (k, *shape). Shared
hyperparameter names: ``scale`` (λ ≥ 0, default 1), ``density`` (fraction kept, in (0, 1]),
``seed`` / ``generator`` (random methods). Data-aware methods take their extra inputs as
explicit keywords (``regmean``: ``grams``). Trimming is per module, i.e. over the LoRA-affected
tensors only: a global top-k over all parameters trims nothing when only q/v changed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from osrm.errors import OsrmError
from osrm.merging.checks import (
    SIGN_METHODS,
    check_below_one,
    check_choice,
    check_flag,
    check_fraction,
    make_generator,
    prepare,
)
from osrm.merging.primitives import (
    disjoint_mean,
    drop_random,
    elect_sign,
    scale_tasks_,
    trim_magnitude,
    weighted_sum,
)


def check_sum(weights: Tensor) -> None:
    """weight_average divides by Σ w_i."""
    if abs(float(weights.sum())) < 1e-12:
        raise OsrmError("weight_average: the weights sum to 0")


def check_crumbs(gamma: float, density: float) -> None:
    """Breadcrumbs drops the top ``gamma`` and keeps the next ``density``: both fit in 1."""
    if gamma + density > 1 + 1e-12:
        raise OsrmError(f"gamma + density must be <= 1, got {gamma} + {density}")


def task_arithmetic(deltas: Tensor, weights: Tensor, *, scale: float = 1.0) -> Tensor:
    """λ · Σ w_i Δ_i. Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023."""
    x, w = prepare(deltas, weights, scale)
    return (scale * weighted_sum(x, w)).to(deltas.dtype)


def weight_average(deltas: Tensor, weights: Tensor, *, scale: float = 1.0) -> Tensor:
    """λ · Σ w_i Δ_i / Σ w_i. Wortsman et al., "Model soups", ICML 2022."""
    x, w = prepare(deltas, weights, scale)
    check_sum(w)
    total = float(w.sum())
    return (scale / total * weighted_sum(x, w)).to(deltas.dtype)


def ties(
    deltas: Tensor,
    weights: Tensor,
    *,
    density: float = 0.2,
    scale: float = 1.0,
    majority_sign: str = "total",
    normalize: bool = False,
) -> Tensor:
    """Trim each task to its top ``density`` by magnitude, elect signs, disjoint mean, × λ.

    Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023.
    With task weights w_i, entry by entry: δ_i = w_i · trim(Δ_i); the sign is elected on the
    *weighted* δ_i (a negated task votes with its effective sign); the result is
    λ · Σ_agreeing δ_i / #agreeing (``normalize=False``, the default: with equal positive
    weights this is peft's ``ties`` exactly, and weights act as multipliers), or
    λ · Σ_agreeing δ_i / Σ_agreeing w_i (``normalize=True``: mergekit's ``normalize: true``,
    a weighted mean of the agreeing deltas, so a common factor on the weights cancels).
    """
    x, w = prepare(deltas, weights, scale)
    density = check_fraction("density", density)
    check_choice("majority_sign", majority_sign, SIGN_METHODS)
    check_flag("normalize", normalize)
    trimmed = scale_tasks_(trim_magnitude(x, density), w)
    sign = elect_sign(trimmed, majority_sign)
    return (scale * disjoint_mean(trimmed, sign, w if normalize else None)).to(deltas.dtype)


def magnitude_prune(
    deltas: Tensor, weights: Tensor, *, density: float = 0.2, scale: float = 1.0
) -> Tensor:
    """Trim each task to its top ``density`` by magnitude, then λ · Σ w_i Δ̂_i.

    The TIES paper's "trim" step alone (Yadav et al., NeurIPS 2023); peft's ``magnitude_prune``.
    """
    x, w = prepare(deltas, weights, scale)
    density = check_fraction("density", density)
    return (scale * weighted_sum(trim_magnitude(x, density), w)).to(deltas.dtype)


def breadcrumbs(
    deltas: Tensor,
    weights: Tensor,
    *,
    density: float = 0.9,
    gamma: float = 0.01,
    scale: float = 1.0,
) -> Tensor:
    """Drop each task's top ``gamma`` outliers and keep the next ``density``, then TA.

    Davari & Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse
    Masks", ECCV 2024. ``gamma`` + ``density`` must not exceed 1.
    """
    x, w = prepare(deltas, weights, scale)
    density = check_fraction("density", density)
    check_below_one("gamma", gamma)
    check_crumbs(gamma, density)
    kept = trim_magnitude(x, density, skip_top=gamma)
    return (scale * weighted_sum(kept, w)).to(deltas.dtype)


def dare_linear(
    deltas: Tensor,
    weights: Tensor,
    *,
    density: float = 0.5,
    scale: float = 1.0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Drop entries with probability 1 − density, rescale by 1/density, then TA.

    Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models
    as a Free Lunch", ICML 2024. Without ``seed`` or ``generator`` the seed is 0.
    """
    x, w = prepare(deltas, weights, scale)
    density = check_fraction("density", density)
    dropped = drop_random(x, density, make_generator(seed, generator))
    return (scale * weighted_sum(dropped, w)).to(deltas.dtype)


def dare_ties(
    deltas: Tensor,
    weights: Tensor,
    *,
    density: float = 0.5,
    scale: float = 1.0,
    majority_sign: str = "total",
    normalize: bool = False,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DARE's drop and rescale, then TIES' sign election and disjoint mean, × λ.

    Yu et al., ICML 2024 (DARE) combined with Yadav et al., NeurIPS 2023 (TIES). Weights and
    ``normalize`` act as in :func:`ties` (sign elected on the weighted deltas; divided by the
    agreeing count, or with ``normalize=True`` by the agreeing tasks' summed weights).
    """
    x, w = prepare(deltas, weights, scale)
    density = check_fraction("density", density)
    check_choice("majority_sign", majority_sign, SIGN_METHODS)
    check_flag("normalize", normalize)
    dropped = scale_tasks_(drop_random(x, density, make_generator(seed, generator)), w)
    sign = elect_sign(dropped, majority_sign)
    return (scale * disjoint_mean(dropped, sign, w if normalize else None)).to(deltas.dtype)
