"""Merge methods in ΔW space: one signature, one registry (``METHODS``, at the bottom).

Every method merges the k task deltas of **one** module:
``fn(deltas (k, d_out, d_in), weights (k,), **hp) -> ΔW (d_out, d_in)``, in the deltas' dtype
(computed in float32 or float64). Element-wise methods accept any (k, *shape). Shared
hyperparameter names: ``scale`` (λ ≥ 0, default 1), ``density`` (fraction kept, in (0, 1]),
``seed`` / ``generator`` (random methods). Data-aware methods take their extra inputs as
explicit keywords (``regmean``: ``grams``). Trimming is per module, i.e. over the LoRA-affected
tensors only: a global top-k over all parameters trims nothing when only q/v changed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from osrm.errors import OsrmError
from osrm.merging.checks import (
    SIGN_METHODS,
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
from osrm.merging.structured import knots, regmean, tsv


def task_arithmetic(deltas: Tensor, weights: Tensor, *, scale: float = 1.0) -> Tensor:
    """λ · Σ w_i Δ_i. Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023."""
    x, w = prepare(deltas, weights, scale)
    return (scale * weighted_sum(x, w)).to(deltas.dtype)


def weight_average(deltas: Tensor, weights: Tensor, *, scale: float = 1.0) -> Tensor:
    """λ · Σ w_i Δ_i / Σ w_i. Wortsman et al., "Model soups", ICML 2022."""
    x, w = prepare(deltas, weights, scale)
    total = float(w.sum())
    if abs(total) < 1e-12:
        raise OsrmError("weight_average: the weights sum to 0")
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
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma < 1:
        raise OsrmError(f"gamma must be a number in [0, 1), got {gamma!r}")
    if gamma + density > 1 + 1e-12:
        raise OsrmError(f"gamma + density must be <= 1, got {gamma} + {density}")
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


# name -> method; keys follow the literature (and peft/mergekit where they agree)
METHODS: dict[str, Callable[..., Tensor]] = {
    "weight_average": weight_average,
    "task_arithmetic": task_arithmetic,
    "ties": ties,
    "dare_linear": dare_linear,
    "dare_ties": dare_ties,
    "magnitude_prune": magnitude_prune,
    "breadcrumbs": breadcrumbs,
    "knots": knots,
    "tsv": tsv,
    "regmean": regmean,
}
# exact in the LoRA factors: the merged adapter is a concatenation, no SVD needed
LINEAR_METHODS = ("weight_average", "task_arithmetic")
RANDOM_METHODS = ("dare_linear", "dare_ties")


def get_method(name: str) -> Callable[..., Tensor]:
    """The method registered under ``name``, or :class:`OsrmError` listing the valid names."""
    if name not in METHODS:
        raise OsrmError(f"merge method {name!r} is unknown; expected one of {sorted(METHODS)}")
    return METHODS[name]


def hyperparameters(name: str) -> dict[str, object]:
    """Hyperparameter name -> default (``inspect.Parameter.empty`` if required) of a method."""
    params = inspect.signature(get_method(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def check_hyperparameters(name: str, hp: dict) -> None:
    """Raise :class:`OsrmError` listing the valid names if ``hp`` has an unknown key."""
    valid = hyperparameters(name)
    unknown = sorted(set(hp) - set(valid))
    if unknown:
        raise OsrmError(
            f"merge method {name!r} has no hyperparameter {unknown[0]!r}; valid: {sorted(valid)}"
        )


def validate_hyperparameters(
    name: str, hp: dict, weights: Sequence[float] | Tensor | None = None
) -> None:
    """Check a method's hyperparameter names *and values* (and task weights) before any work.

    Values are checked where the method checks them, by merging a tiny zero stack, so the
    errors are the method's own one-line :class:`OsrmError` messages.
    """
    fn = get_method(name)
    check_hyperparameters(name, hp)
    if "grams" in hp or "generator" in hp:
        raise OsrmError(f"merge method {name!r}: grams and generator are not hyperparameters")
    w = torch.ones(2) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    k = max(int(w.numel()), 1)
    extra = {}
    if name == "regmean":  # identity Gram matrices: any valid alpha and weights pass
        extra["grams"] = torch.eye(2, dtype=torch.float64).expand(k, 2, 2)
    fn(torch.zeros(k, 2, 2), w, **hp, **extra)
