"""The merge methods' registry, ``METHODS``: the one place a method's traits are stated.

Each entry is a :class:`Method` record: the function (``fn(deltas (k, d_out, d_in), weights
(k,), **hp) -> ΔW``), its hyperparameters with defaults and checks, and the traits callers act
on (``linear``, ``random``, ``needs_stats``). Names and values are validated here, once, by
:func:`validate_hyperparameters` (config merge grid, ``osrm merge``): the checks are the
methods' own, so the messages are too. Adding a method means adding one entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from osrm.errors import OsrmError
from osrm.merging.checks import (
    SIGN_METHODS,
    check_below_one,
    check_choice,
    check_flag,
    check_fraction,
    check_optional_fraction,
    check_scale,
    check_seed,
    check_unit,
    check_weights,
)
from osrm.merging.methods import (
    breadcrumbs,
    check_crumbs,
    check_sum,
    dare_linear,
    dare_ties,
    magnitude_prune,
    task_arithmetic,
    ties,
    weight_average,
)
from osrm.merging.structured import GRAM_KINDS, KNOTS_INNER, check_positive, knots, regmean, tsv


@dataclass(frozen=True)
class Hyper:
    """One hyperparameter: its default (as in the function) and the check the function runs."""

    default: Any
    check: Callable[[str, Any], object]  # check(name, value): OsrmError if invalid


@dataclass(frozen=True)
class Method:
    """A merge method and everything callers need to know about it."""

    fn: Callable[..., Tensor]
    hyperparameters: Mapping[str, Hyper]  # in the function's keyword order
    # linear: ΔW = Σ c_i Δ_i with c = coeffs(weights, hp), so a merged LoRA adapter is an exact
    # concatenation of the factors (no SVD)
    coeffs: Callable[[Tensor, Mapping[str, Any]], Tensor] | None = None
    random: bool = False  # draws entries: the merge gives it one seeded generator per module
    needs_stats: bool = False  # reads input Gram matrices (``grams``) from statistics files
    check: Callable[[Mapping[str, Any], Tensor], None] | None = None  # joint hp / weights rules

    @property
    def linear(self) -> bool:
        return self.coeffs is not None

    @property
    def inputs(self) -> tuple[str, ...]:
        """Keywords the merge supplies per module, never a config: generator, Gram matrices."""
        return ("generator",) * self.random + ("grams",) * self.needs_stats

    def __call__(self, deltas: Tensor, weights: Tensor, **kwargs: Any) -> Tensor:
        return self.fn(deltas, weights, **kwargs)


SCALE = Hyper(1.0, check_scale)
SIGN = Hyper("total", partial(check_choice, valid=SIGN_METHODS))
NORMALIZE = Hyper(False, check_flag)
SEED = Hyper(None, check_seed)


def density(default: float) -> Hyper:
    return Hyper(default, check_fraction)


# name -> method; keys follow the literature (and peft/mergekit where they agree)
METHODS: dict[str, Method] = {
    "weight_average": Method(
        weight_average, {"scale": SCALE},
        coeffs=lambda w, hp: hp["scale"] * (w / w.sum()), check=lambda hp, w: check_sum(w),
    ),
    "task_arithmetic": Method(
        task_arithmetic, {"scale": SCALE}, coeffs=lambda w, hp: hp["scale"] * w
    ),
    "ties": Method(
        ties, {"density": density(0.2), "scale": SCALE, "majority_sign": SIGN,
               "normalize": NORMALIZE},
    ),
    "dare_linear": Method(
        dare_linear, {"density": density(0.5), "scale": SCALE, "seed": SEED}, random=True
    ),
    "dare_ties": Method(
        dare_ties, {"density": density(0.5), "scale": SCALE, "majority_sign": SIGN,
                    "normalize": NORMALIZE, "seed": SEED},
        random=True,
    ),
    "magnitude_prune": Method(magnitude_prune, {"density": density(0.2), "scale": SCALE}),
    "breadcrumbs": Method(
        breadcrumbs, {"density": density(0.9), "gamma": Hyper(0.01, check_below_one),
                      "scale": SCALE},
        check=lambda hp, w: check_crumbs(hp["gamma"], float(hp["density"])),
    ),
    "knots": Method(
        knots, {"inner": Hyper("ties", partial(check_choice, valid=KNOTS_INNER)),
                "density": density(0.2), "scale": SCALE, "majority_sign": SIGN},
    ),
    "tsv": Method(tsv, {"fraction": Hyper(None, check_optional_fraction), "scale": SCALE}),
    "regmean": Method(
        regmean, {"alpha": Hyper(0.9, check_unit), "scale": SCALE,
                  "gram": Hyper("mean", partial(check_choice, valid=GRAM_KINDS))},
        needs_stats=True, check=lambda hp, w: check_positive(w),
    ),
}  # fmt: skip
# a derived view of the ``linear`` trait, kept for importers (bench/merge_speed.py)
LINEAR_METHODS = tuple(name for name, m in METHODS.items() if m.linear)


def get_method(name: str) -> Method:
    """The method registered under ``name``, or :class:`OsrmError` listing the valid names."""
    if name not in METHODS:
        raise OsrmError(f"merge method {name!r} is unknown; expected one of {sorted(METHODS)}")
    return METHODS[name]


def methods_with(trait: str) -> str:
    """The names of the methods with ``trait`` (e.g. ``"needs_stats"``), for messages."""
    return " or ".join(name for name, m in METHODS.items() if getattr(m, trait))


def hyperparameters(name: str) -> dict[str, Any]:
    """Hyperparameter name -> default of a method."""
    return {key: h.default for key, h in get_method(name).hyperparameters.items()}


def check_hyperparameters(name: str, hp: Mapping[str, Any]) -> None:
    """Raise :class:`OsrmError` listing the valid names if ``hp`` has an unknown key.

    The per-module inputs (``generator``, ``grams``) are accepted here: library callers may
    pass a generator, and the merge rejects a ``grams`` keyword with a message of its own.
    """
    method = get_method(name)
    valid = [*method.hyperparameters, *method.inputs]
    unknown = sorted(set(hp) - set(valid))
    if unknown:
        raise OsrmError(
            f"merge method {name!r} has no hyperparameter {unknown[0]!r}; valid: {sorted(valid)}"
        )


def validate_hyperparameters(
    name: str, hp: Mapping[str, Any], weights: Sequence[float] | Tensor | None = None
) -> None:
    """Check a method's hyperparameter names *and values* (and task weights) before any work.

    Each value goes through its :class:`Hyper` check (in the method's keyword order), then the
    method's joint rule sees every value (defaults filled in) and the weights.
    """
    method = get_method(name)
    check_hyperparameters(name, hp)
    if set(hp) & set(method.inputs):
        raise OsrmError(f"merge method {name!r}: grams and generator are not hyperparameters")
    w = torch.ones(2) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    w = check_weights(w, max(int(w.numel()), 1))
    for key, hyper in method.hyperparameters.items():
        if key in hp:
            hyper.check(key, hp[key])
    if method.check is not None:
        method.check({**hyperparameters(name), **hp}, w)
