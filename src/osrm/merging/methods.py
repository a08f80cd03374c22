"""Element-wise merge methods in ΔW space, each registered in ``METHODS`` where it is defined.

Every method merges the k task deltas of **one** module:
``fn(deltas (k, d_out, d_in), weights (k,), **hp) -> ΔW (d_out, d_in)``, and accepts any
(k, *shape). The bodies see inputs already checked and in a float compute dtype, and their
result is cast back to the deltas' dtype (:meth:`~osrm.merging.registry.Method.__call__`).
Shared hyperparameter names: ``scale`` (λ ≥ 0, default 1), ``density`` (fraction kept, in
(0, 1]), ``seed`` / ``generator`` (random methods). Trimming is per module, i.e. over the
LoRA-affected tensors only: a global top-k over all parameters trims nothing when only q/v
changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from osrm.errors import OsrmError
from osrm.merging.checks import check_below_one
from osrm.merging.primitives import agreeing_mean, drop_random, trim_magnitude, weighted_sum
from osrm.merging.registry import register


def _nonzero_sum(hp: Mapping[str, Any], weights: Tensor) -> None:
    """weight_average divides by Σ w_i."""
    if abs(float(weights.sum())) < 1e-12:
        raise OsrmError("weight_average: the weights sum to 0")


@register("weight_average", coeffs=lambda w, hp: hp["scale"] * (w / w.sum()), check=_nonzero_sum)
def weight_average(deltas: Tensor, weights: Tensor, *, scale: float = 1.0) -> Tensor:
    """λ · Σ w_i Δ_i / Σ w_i. Wortsman et al., "Model soups", ICML 2022."""
    return scale / float(weights.sum()) * weighted_sum(deltas, weights)


@register("task_arithmetic", coeffs=lambda w, hp: hp["scale"] * w)
def task_arithmetic(deltas: Tensor, weights: Tensor, *, scale: float = 1.0) -> Tensor:
    """λ · Σ w_i Δ_i. Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023."""
    return scale * weighted_sum(deltas, weights)


@register("ties")
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
    trimmed = trim_magnitude(deltas, density)
    return scale * agreeing_mean(trimmed, weights, majority_sign, normalize)


@register("dare_linear", random=True)
def dare_linear(
    deltas: Tensor,
    weights: Tensor,
    *,
    density: float = 0.5,
    generator: torch.Generator,
    scale: float = 1.0,
) -> Tensor:
    """Drop entries with probability 1 − density, rescale by 1/density, then TA.

    Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models
    as a Free Lunch", ICML 2024. Called without ``seed`` or ``generator``, the seed is 0.
    """
    dropped = drop_random(deltas, density, generator)
    return scale * weighted_sum(dropped, weights)


@register("dare_ties", random=True)
def dare_ties(
    deltas: Tensor,
    weights: Tensor,
    *,
    generator: torch.Generator,
    density: float = 0.5,
    scale: float = 1.0,
    majority_sign: str = "total",
    normalize: bool = False,
) -> Tensor:
    """DARE's drop and rescale, then TIES' sign election and disjoint mean, × λ.

    Yu et al., ICML 2024 (DARE) combined with Yadav et al., NeurIPS 2023 (TIES). Weights and
    ``normalize`` act as in :func:`ties` (sign elected on the weighted deltas; divided by the
    agreeing count, or with ``normalize=True`` by the agreeing tasks' summed weights).
    """
    dropped = drop_random(deltas, density, generator)
    return scale * agreeing_mean(dropped, weights, majority_sign, normalize)


@register("magnitude_prune")
def magnitude_prune(
    deltas: Tensor, weights: Tensor, *, density: float = 0.2, scale: float = 1.0
) -> Tensor:
    """Trim each task to its top ``density`` by magnitude, then λ · Σ w_i Δ̂_i.

    The TIES paper's "trim" step alone (Yadav et al., NeurIPS 2023); peft's ``magnitude_prune``.
    """
    return scale * weighted_sum(trim_magnitude(deltas, density), weights)


def _crumbs_fit(hp: Mapping[str, Any], weights: Tensor) -> None:
    """Breadcrumbs drops the top ``gamma`` and keeps the next ``density``: both fit in 1."""
    gamma, density = hp["gamma"], float(hp["density"])
    if gamma + density > 1 + 1e-12:
        raise OsrmError(f"gamma + density must be <= 1, got {gamma} + {density}")


@register("breadcrumbs", gamma=check_below_one, check=_crumbs_fit)
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
    kept = trim_magnitude(deltas, density, skip_top=gamma)
    return scale * weighted_sum(kept, weights)
