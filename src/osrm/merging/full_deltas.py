"""Task vectors of fully fine-tuned checkpoints: θ_ft − θ_0, heads excluded, read lazily.

Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023. Two traps are handled here:
task heads (different per task, often of different shapes) never enter a task vector, and a
bf16 checkpoint fine-tuned from an fp32 base would otherwise show a rounding "delta" in every
parameter (method.md §5): both sides are first rounded to the coarser of the two dtypes, so an
untouched parameter gives exactly zero.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from osrm.errors import OsrmError
from osrm.merging.deltas import LazyMapping

log = logging.getLogger(__name__)

# top-level heads of transformers' task models; matched as a dotted name component
HEAD_NAMES = ("classifier", "score", "lm_head", "qa_outputs")


class SafetensorsDir(LazyMapping):
    """Lazy reader of a ``save_pretrained`` directory (one file or an indexed set of shards)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index = self.path / "model.safetensors.index.json"
        try:
            if index.is_file():
                weight_map = json.loads(index.read_text())["weight_map"]
                self.index = {k: self.path / v for k, v in weight_map.items()}
            else:
                single = self.path / "model.safetensors"
                if not single.is_file():
                    raise OsrmError(f"{self.path}: no model.safetensors or its index found")
                with safe_open(str(single), framework="pt") as f:
                    self.index = dict.fromkeys(f.keys(), single)
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
            raise OsrmError(f"{self.path}: not a readable safetensors checkpoint ({e})") from None

    def __getitem__(self, name: str) -> Tensor:
        file = self.index[name]
        try:
            with safe_open(str(file), framework="pt") as f:
                return f.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise OsrmError(f"{file}: cannot read {name} ({e})") from None


def _store(source: str | Path | nn.Module | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    if isinstance(source, nn.Module):
        return source.state_dict()  # views of the parameters, no copy
    if isinstance(source, Mapping):
        return source
    return SafetensorsDir(source)


def coarser(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """The float dtype with the larger machine epsilon (bf16 over fp16 over fp32 over fp64)."""
    return a if torch.finfo(a).eps >= torch.finfo(b).eps else b


class FullDeltas(LazyMapping):
    """Lazy mapping parameter name -> θ_ft − θ_0 (float32) of a fully fine-tuned checkpoint.

    Args:
        finetuned: the fine-tuned model, state dict or ``save_pretrained`` directory.
        base: the pre-trained model, state dict or directory.
        heads: dotted name components marking task heads; their parameters are left out.
        task: the task name used for its head file in merged outputs.

    Attributes:
        excluded: parameter name -> why it is not a task-vector entry (head, shape or dtype
            mismatch, present on one side only).
    """

    def __init__(
        self,
        finetuned: str | Path | nn.Module | Mapping[str, Tensor],
        base: str | Path | nn.Module | Mapping[str, Tensor],
        heads: Sequence[str] = HEAD_NAMES,
        task: str | None = None,
    ):
        self.finetuned, self.base = _store(finetuned), _store(base)
        self.task = task
        self.path = finetuned if isinstance(finetuned, (str, Path)) else None
        self.index: dict[str, None] = {}  # the task-vector entries, in sorted order
        self.excluded: dict[str, str] = {}
        for name in sorted(set(self.finetuned) | set(self.base)):
            reason = self._exclusion(name, heads)
            if reason:
                self.excluded[name] = reason
            else:
                self.index[name] = None
        if not self.index:
            raise OsrmError(f"{finetuned} vs {base}: no parameter is shared by both checkpoints")
        mismatched = [n for n, r in self.excluded.items() if r.startswith("shape")]
        if mismatched:
            log.warning(
                "%d parameters differ in shape, left out: %s", len(mismatched), mismatched[:5]
            )
        self.transposed: frozenset[str] = frozenset()  # parameters keep their stored layout

    def _exclusion(self, name: str, heads: Sequence[str]) -> str | None:
        if any(part in heads for part in name.split(".")):
            return "task head"
        if name not in self.finetuned or name not in self.base:
            return "present in one checkpoint only"
        ft, b0 = self.finetuned[name], self.base[name]
        if not (ft.is_floating_point() and b0.is_floating_point()):
            return "not a float tensor"
        if ft.shape != b0.shape:
            return f"shape {tuple(ft.shape)} vs base {tuple(b0.shape)}"
        return None

    def __getitem__(self, name: str) -> Tensor:
        if name in self.excluded:
            raise KeyError(name)
        ft, b0 = self.finetuned[name], self.base[name]
        dtype = coarser(ft.dtype, b0.dtype)
        delta = ft.to(dtype).float() - b0.to(dtype).float()
        if not torch.isfinite(delta).all():
            raise OsrmError(f"{name}: the fine-tuned checkpoint holds NaN or Inf values")
        return delta

    def heads(self) -> dict[str, Tensor]:
        """The fine-tuned checkpoint's head parameters (saved per task, never merged)."""
        names = [n for n, why in self.excluded.items() if why == "task head"]
        return {n: self.finetuned[n].detach().clone() for n in names if n in self.finetuned}


def full_deltas(
    finetuned: str | Path | nn.Module | Mapping[str, Tensor],
    base: str | Path | nn.Module | Mapping[str, Tensor],
    heads: Sequence[str] = HEAD_NAMES,
    task: str | None = None,
) -> FullDeltas:
    """θ_ft − θ_0 per parameter, heads excluded, computed on access (see :class:`FullDeltas`)."""
    return FullDeltas(finetuned, base, heads, task)
