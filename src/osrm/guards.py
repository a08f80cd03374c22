"""Guards applied before an artifact is written or a model is scored.

Non-finite tensors (:func:`check_finite`): an overflow (an extreme ``lora_alpha``, a merge scale
of 1e39) turns weights into Inf/NaN without any exception; every writer of weights (merged
backbones, merged LoRA factors, heads, trained adapters, statistics) and the scorer call this
first, so such a tensor is never written, sealed or scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from osrm.errors import OsrmError


def first_non_finite(tensors: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]]) -> str | None:
    """Name of the first floating tensor holding NaN or ±Inf (in the given order), or None."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    for name, t in items:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def check_finite(tensors: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]], what: str) -> None:
    """Raise a one-line :class:`OsrmError` naming the first non-finite tensor of ``what``.

    Args:
        tensors: name -> tensor (any shape; integer tensors are always finite).
        what: the artifact, e.g. ``"merged weights of --out merged/ta"``.
    """
    bad = first_non_finite(tensors)
    if bad is not None:
        raise OsrmError(
            f"{what}: {bad} holds NaN or Inf values (an overflow? check the merge scale, the "
            "task weights and the adapters' lora_alpha)"
        )
