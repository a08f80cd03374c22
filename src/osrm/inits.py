"""LoRA inits and OSRM subspace modes: every name defined once, here.

The config derives its ``Literal`` types from these (so this module imports no torch), training
reads each init's traits, and :data:`osrm.subspace.SOLVERS` holds one solver per mode (it refuses
to import when the two name different modes). A new mode: its name here, its solver there.
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("cov", "mean", "contrast")  # how A is solved for (osrm.subspace.SOLVERS)
WEIGHTINGS = ("equal", "tokens")  # how C_{-i} pools the other tasks' moments
MEAN_BASES = ("svd", "random")  # mean mode: which orthonormal basis of the null space


@dataclass(frozen=True)
class Init:
    """How an adapter's A starts."""

    mode: str | None  # OSRM subspace mode; None: peft's default LoRA init
    doc: str  # one phrase for the config's description
    freeze_a: bool = False  # A stays at its start whatever train.freeze_a says


INITS: dict[str, Init] = {
    "lora": Init(None, "peft default"),
    "osrm": Init("cov", "paper (cov)"),
    "osrm_mean": Init("mean", "reference"),
    "contrast": Init("contrast", "ours"),
    "contrast_frozen": Init("contrast", "contrast with A frozen (only B trains)", freeze_a=True),
}
