"""Per-task heads: never merged, saved beside a merged artifact, loaded back on demand."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from osrm.errors import OsrmError
from osrm.merging.manifest import HEADS_DIR


def save_heads(directory: Path, sources: Sequence[Mapping], tasks: Sequence[str]) -> dict[str, str]:
    """Write each source's head (``heads()``: name -> tensor) to ``heads/<task>.safetensors``.

    Returns:
        task -> path relative to ``directory``, for the tasks that have a head.
    """
    written = {}
    for source, task in zip(sources, tasks, strict=True):
        heads = source.heads() if hasattr(source, "heads") else {}
        if heads:
            (directory / HEADS_DIR).mkdir(exist_ok=True)
            written[task] = f"{HEADS_DIR}/{task}.safetensors"
            tensors = {k: v.contiguous() for k, v in heads.items()}
            save_file(tensors, str(directory / written[task]))
    return written


def load_head(model: nn.Module, merged_dir: str | Path, task: str) -> nn.Module:
    """Load ``heads/<task>.safetensors`` from a merged artifact into ``model`` (in place).

    Works for a transformers model or a ``PeftModel`` around one; every head tensor must
    match a parameter of the same name and shape.
    """
    path = Path(merged_dir) / HEADS_DIR / f"{task}.safetensors"
    if not path.is_file():
        raise OsrmError(f"{path}: no head saved for task {task!r}")
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = dict(inner.named_parameters())
    heads = load_file(str(path))
    with torch.no_grad():
        for name, tensor in heads.items():
            target = _head_param(params, name)
            if target is None or target.shape != tensor.shape:
                raise OsrmError(f"{path}: {name} does not match a parameter of the model")
            target.copy_(tensor.to(target.dtype))
    return model


def _head_param(params: Mapping[str, nn.Parameter], name: str) -> nn.Parameter | None:
    if name in params:
        return params[name]
    # inside a PeftModel a saved head lives at <module>.modules_to_save.<adapter>.<param>
    module, _, leaf = name.rpartition(".")
    prefix = f"{module}.modules_to_save."
    hits = [p for n, p in params.items() if n.startswith(prefix) and n.endswith(f".{leaf}")]
    return hits[0] if len(hits) == 1 else None
