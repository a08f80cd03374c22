"""Argument checks shared by the merge methods: one-line :class:`OsrmError` on bad input.

Each value check takes ``(name, value)``, so the registry (:mod:`osrm.merging.registry`) can
run the very check a method runs, before any work, under the hyperparameter's name.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from osrm.errors import OsrmError

SIGN_METHODS = ("total", "frequency")


def _number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def check_fraction(name: str, value: float) -> float:
    """``value`` as a float in (0, 1], else a one-line :class:`OsrmError` naming ``name``."""
    if not _number(value) or not 0 < value <= 1:
        raise OsrmError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def check_optional_fraction(name: str, value: float | None) -> None:
    """``None`` (the method's own default) or a fraction in (0, 1]."""
    if value is not None:
        check_fraction(name, value)


def check_unit(name: str, value: float) -> None:
    """A number in [0, 1] (e.g. RegMean's ``alpha``)."""
    if not _number(value) or not 0 <= value <= 1:
        raise OsrmError(f"{name} must be a number in [0, 1], got {value!r}")


def check_below_one(name: str, value: float) -> None:
    """A number in [0, 1) (e.g. Breadcrumbs' ``gamma``)."""
    if not _number(value) or not 0 <= value < 1:
        raise OsrmError(f"{name} must be a number in [0, 1), got {value!r}")


def check_scale(name: str, value: float) -> None:
    """λ: a finite number >= 0."""
    if not _number(value) or not 0 <= value < math.inf:
        raise OsrmError(f"{name} must be a finite number >= 0, got {value!r}")


def check_weights(weights: Tensor, k: int) -> Tensor:
    """(k,) finite task weights, else :class:`OsrmError`."""
    weights = torch.as_tensor(weights)
    if weights.shape != (k,) or not torch.isfinite(weights).all():
        raise OsrmError(f"weights: expected {k} finite numbers, got {weights}")
    return weights


def prepare(deltas: Tensor, weights: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Validate shapes/values; return (deltas in a float compute dtype, weights likewise)."""
    if deltas.ndim < 1 or deltas.shape[0] == 0:
        raise OsrmError("deltas: expected (k, ...) with at least one task (k >= 1)")
    weights = check_weights(weights, deltas.shape[0])
    check_scale("scale", scale)
    x = deltas if deltas.dtype in (torch.float32, torch.float64) else deltas.float()
    return x, weights.to(x.dtype)


def check_flag(name: str, value: object) -> bool:
    """``value`` if it is a bool (``true``/``false`` on the command line), else OsrmError."""
    if not isinstance(value, bool):
        raise OsrmError(f"{name} must be true or false, got {value!r}")
    return value


def check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise OsrmError(f"{name} {value!r} is not valid; expected one of {list(valid)}")


def check_seed(name: str, seed: int | None) -> None:
    """``None`` or an integer torch.Generator accepts."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise OsrmError(f"{name} must be an integer, got {seed!r}")
    if seed is not None and not -(2**63) <= seed < 2**64:  # torch.Generator's seed range
        raise OsrmError(f"{name} must be an integer within 64 bits, got {seed!r}")


def make_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    """The generator a random method draws from: the given one, else one seeded (0 if None)."""
    if generator is not None:
        if seed is not None:
            raise OsrmError("pass either seed or generator, not both")
        return generator
    return torch.Generator().manual_seed(0 if seed is None else seed)
