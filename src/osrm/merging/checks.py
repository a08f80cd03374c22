"""Argument checks shared by the merge methods: one-line :class:`OsrmError` on bad input."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from osrm.errors import OsrmError

SIGN_METHODS = ("total", "frequency")


def check_fraction(name: str, value: float) -> float:
    """``value`` as a float in (0, 1], else a one-line :class:`OsrmError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise OsrmError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def prepare(deltas: Tensor, weights: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Validate shapes/values; return (deltas in a float compute dtype, weights likewise)."""
    if deltas.ndim < 1 or deltas.shape[0] == 0:
        raise OsrmError("deltas: expected (k, ...) with at least one task (k >= 1)")
    weights = torch.as_tensor(weights)
    if weights.shape != (deltas.shape[0],) or not torch.isfinite(weights).all():
        raise OsrmError(f"weights: expected {deltas.shape[0]} finite numbers, got {weights}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale < math.inf:
        raise OsrmError(f"scale must be a finite number >= 0, got {scale!r}")
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


def make_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        if seed is not None:
            raise OsrmError("pass either seed or generator, not both")
        return generator
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise OsrmError(f"seed must be an integer, got {seed!r}")
    if seed is not None and not -(2**63) <= seed < 2**64:  # torch.Generator's seed range
        raise OsrmError(f"seed must be an integer within 64 bits, got {seed!r}")
    return torch.Generator().manual_seed(0 if seed is None else seed)
