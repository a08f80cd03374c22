"""Types of the numeric command-line flags: each rejects a bad value as an argparse usage error.

argparse turns an ``ArgumentTypeError`` into the usual one-line ``osrm: error: ...`` (exit 2),
so a value that would otherwise fail deep inside a command (``--batch-size 0`` as a division by
zero, ``--seed -1`` in the random generator, ``--weights nan`` as NaN weights) fails before it
starts.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from osrm.config import MAX_SEED


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {text!r}")
        return value

    return parse


positive_int = int_range(1)
seed_int = int_range(0, MAX_SEED)


def finite_float(text: str) -> float:
    """A finite number (not NaN or ±inf); the command checks its range."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (e.g. ``--mu``)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def weight_arg(text: str) -> float | str:
    """One ``--weights`` value: a finite number, or ``auto`` / ``auto-per-module`` (from the
    statistics, see :mod:`osrm.merging.auto_weights`)."""
    from osrm.merging.auto_weights import AUTO_MODES

    return text if text in AUTO_MODES else finite_float(text)


def label_list(text: str) -> list[str]:
    """``--labels``: comma-separated class names, none empty, none repeated."""
    names = [n.strip() for n in text.split(",")]
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected two or more distinct, non-empty names separated by commas, got {text!r}"
        )
    return names
