"""Per-task heads: never merged, saved beside a merged artifact, loaded back on demand."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from osrm.errors import OsrmError
from osrm.guards import check_finite
from osrm.heads import swap_head
from osrm.merging.record import HEADS_DIR


def save_heads(directory: Path, sources: Sequence[Mapping], tasks: Sequence[str]) -> dict[str, str]:
    """Write each source's head (``heads()``: name -> tensor) to ``heads/<task>.safetensors``.

    Returns:
        task -> path relative to ``directory``, for the tasks that have a head.
    """
    written = {}
    for source, task in zip(sources, tasks, strict=True):
        heads = source.heads() if hasattr(source, "heads") else {}
        if heads:
            check_finite(heads, f"head of task {task!r}")
            (directory / HEADS_DIR).mkdir(exist_ok=True)
            written[task] = f"{HEADS_DIR}/{task}.safetensors"
            tensors = {k: v.contiguous() for k, v in sorted(heads.items())}
            save_file(tensors, str(directory / written[task]))
    return written


def first_head(sources: Sequence[Mapping], tasks: Sequence[str]) -> tuple[str | None, dict]:
    """The first task that has a head, and that head (name -> tensor): the head a dense output
    carries in its own ``model.safetensors`` (``(None, {})`` when no source has one)."""
    for source, task in zip(sources, tasks, strict=True):
        head = source.heads() if hasattr(source, "heads") else {}
        if head:
            return task, dict(head)
    return None, {}


def read_head(merged_dir: str | Path, task: str) -> dict[str, Tensor]:
    """``heads/<task>.safetensors`` of a merged artifact: name -> tensor, checked finite."""
    path = Path(merged_dir) / HEADS_DIR / f"{task}.safetensors"
    if not path.is_file():
        raise OsrmError(f"{path}: no head saved for task {task!r}")
    try:
        head = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise OsrmError(f"{path}: not a readable safetensors file ({e})") from None
    if not head:
        raise OsrmError(f"{path}: holds no tensors")
    check_finite(head, str(path))
    return head


def load_head(model: nn.Module, merged_dir: str | Path, task: str) -> nn.Module:
    """Put task ``task``'s head from a merged artifact on ``model`` (in place) and return it.

    Works for a transformers model or a ``PeftModel`` around one. The head parameters are
    replaced whatever their current shapes (tasks have different label counts), and the
    config follows: ``num_labels`` / ``id2label`` / ``label2id``, ``problem_type``
    (``regression`` for one output). So ``AutoModelForSequenceClassification.from_pretrained``
    of a dense output plus ``load_head`` scores any of its tasks.
    """
    path = Path(merged_dir) / HEADS_DIR / f"{task}.safetensors"
    try:
        swap_head(model, read_head(merged_dir, task))
    except OsrmError as e:
        if str(e).startswith(str(path)):
            raise
        raise OsrmError(f"{path}: {e}") from None
    return model
