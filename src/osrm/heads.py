"""Per-task heads: trained with each task's adapter, never merged, swapped onto a backbone.

Heads (a BERT ``classifier``, a RoBERTa ``classifier.dense``/``out_proj``, a Llama ``score``) are
read from an adapter's ``modules_to_save`` (:func:`adapter_head`), saved beside a merged artifact
as ``heads/<task>.safetensors`` (:func:`save_heads`) and read back from there (:func:`read_head`).
Evaluating a merged backbone on task t means putting task t's head on it: :func:`use_head` for a
block, without copying the backbone; :func:`load_head` for good.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from osrm.errors import OsrmError
from osrm.guards import check_finite
from osrm.safety import ADAPTER_WEIGHTS

PEFT_PREFIX = "base_model.model."
HEADS_DIR = "heads"  # of a merged artifact: heads/<task>.safetensors
_LABEL_FIELDS = ("id2label", "label2id", "problem_type")


def _load(path: Path, problem: str) -> dict[str, Tensor]:
    """The tensors of a safetensors file; an unreadable one is the error ``path: problem (why)``."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise OsrmError(f"{path}: {problem} ({e})") from None


def adapter_head(adapter_dir: str | Path) -> dict[str, Tensor]:
    """The head saved in a peft adapter: base-model parameter name -> tensor.

    peft stores ``modules_to_save`` under ``base_model.model.<name>``; everything that is not a
    LoRA factor is the head.
    """
    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    weights = _load(path, "cannot read adapter weights")
    head = {k.removeprefix(PEFT_PREFIX): v for k, v in weights.items() if "lora_" not in k}
    if not head:
        raise OsrmError(f"{path}: holds no task head (train with task_type='SEQ_CLS')")
    return head


def head_outputs(head: Mapping[str, Tensor]) -> int:
    """Number of outputs of a head (its last layer's rows): classes, or 1 for regression."""
    last = [v for k, v in head.items() if k.endswith("weight")][-1]
    return int(last.shape[0])


# ------------------------------------------------------------------ heads of merged artifacts


def _source_head(source: object) -> Mapping[str, Tensor]:
    """A task vector's head (``source.heads()``: name -> tensor); empty for sources without."""
    return source.heads() if hasattr(source, "heads") else {}


def save_heads(directory: Path, sources: Sequence[Mapping], tasks: Sequence[str]) -> dict[str, str]:
    """Write each source's head to ``heads/<task>.safetensors``, checked finite.

    Returns:
        task -> path relative to ``directory``, for the tasks that have a head.
    """
    written = {}
    for source, task in zip(sources, tasks, strict=True):
        head = _source_head(source)
        if head:
            check_finite(head, f"head of task {task!r}")
            (directory / HEADS_DIR).mkdir(exist_ok=True)
            written[task] = f"{HEADS_DIR}/{task}.safetensors"
            tensors = {k: v.contiguous() for k, v in sorted(head.items())}
            save_file(tensors, str(directory / written[task]))
    return written


def first_head(sources: Sequence[Mapping], tasks: Sequence[str]) -> tuple[str | None, dict]:
    """The first task that has a head, and that head (name -> tensor): the head a dense output
    carries in its own ``model.safetensors`` (``(None, {})`` when no source has one)."""
    for source, task in zip(sources, tasks, strict=True):
        head = _source_head(source)
        if head:
            return task, dict(head)
    return None, {}


def _head_file(merged_dir: str | Path, task: str) -> Path:
    return Path(merged_dir) / HEADS_DIR / f"{task}.safetensors"


def read_head(merged_dir: str | Path, task: str) -> dict[str, Tensor]:
    """``heads/<task>.safetensors`` of a merged artifact: name -> tensor, checked finite."""
    path = _head_file(merged_dir, task)
    if not path.is_file():
        raise OsrmError(f"{path}: no head saved for task {task!r}")
    head = _load(path, "not a readable safetensors file")
    if not head:
        raise OsrmError(f"{path}: holds no tensors")
    check_finite(head, str(path))
    return head


def load_head(model: nn.Module, merged_dir: str | Path, task: str) -> nn.Module:
    """Put task ``task``'s head from a merged artifact on ``model`` (in place) and return it.

    Works for a transformers model or a ``PeftModel`` around one, whatever the current head's
    shape (see :func:`swap_head`). So ``AutoModelForSequenceClassification.from_pretrained`` of
    a dense output plus ``load_head`` scores any of its tasks.
    """
    head = read_head(merged_dir, task)  # its errors already name the file
    try:
        swap_head(model, head)
    except OsrmError as e:
        raise OsrmError(f"{_head_file(merged_dir, task)}: {e}") from None
    return model


# ------------------------------------------------------------------ swapping


@contextmanager
def use_head(model: nn.Module, head: Mapping[str, Tensor]) -> Iterator[nn.Module]:
    """Temporarily put ``head`` on a model (a transformers model or a ``PeftModel``).

    Shapes may differ from the current head (tasks with other numbers of labels): parameters
    are swapped, not copied into, and the config's label fields follow; both are restored on
    exit.
    """
    inner = _base(model)
    config = getattr(inner, "config", None)
    saved: list[tuple[object, str, object]] = []  # (owner, attribute, value) to put back
    if config is not None:
        saved = [(config, k, getattr(config, k, None)) for k in _LABEL_FIELDS]
        if getattr(inner, "num_labels", None) is not None:
            saved.append((inner, "num_labels", inner.num_labels))
    try:
        saved += swap_head(model, head)
        yield model
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def swap_head(model: nn.Module, head: Mapping[str, Tensor]) -> list[tuple[nn.Module, str, Tensor]]:
    """Replace the named head parameters of ``model`` (in place), whatever their shapes.

    The one mechanism behind :func:`use_head` (temporary) and :func:`load_head` (permanent).
    Inside a ``PeftModel`` the parameter of the trained ``modules_to_save`` copy is replaced.
    ``config.num_labels`` (with ``id2label`` / ``label2id``), ``model.num_labels`` and
    ``config.problem_type`` (``regression`` for one output) are set from the head's outputs.

    Returns:
        (module, parameter name, previous parameter) per head tensor, to undo the swap.
    """
    targets = []
    for name in head:  # resolve every name first: a bad head changes nothing
        module_name, _, param_name = name.rpartition(".")
        module = _head_module(model, module_name)
        if module is None or not isinstance(getattr(module, param_name, None), Tensor):
            raise OsrmError(f"head parameter {name!r} does not exist in the model")
        targets.append((module, param_name, getattr(module, param_name), head[name]))
    saved = []
    for module, param_name, old, value in targets:
        new = value.detach().to(device=old.device, dtype=old.dtype).clone()
        setattr(module, param_name, nn.Parameter(new, requires_grad=False))
        saved.append((module, param_name, old))
    if head:
        _set_num_labels(model, head_outputs(head))
    return saved


def _base(model: nn.Module) -> nn.Module:
    """The transformers model (inside a ``PeftModel``)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _head_module(model: nn.Module, dotted: str) -> nn.Module | None:
    """The module at ``dotted`` (a base-model name); inside a ``PeftModel``, the active copy of
    a ``modules_to_save`` wrapper met on the way (peft's forward uses that copy)."""
    module = _base(model)
    for part in dotted.split(".") if dotted else []:
        module = getattr(_active_copy(module), part, None)
        if not isinstance(module, nn.Module):
            return None
    return _active_copy(module)


def _active_copy(module: nn.Module) -> nn.Module:
    copies = getattr(module, "modules_to_save", None)
    if not isinstance(copies, nn.ModuleDict) or not hasattr(module, "original_module"):
        return module
    active = getattr(module, "active_adapter", None)
    active = active[0] if isinstance(active, (list, tuple)) and active else active
    return copies[active] if active in copies else next(iter(copies.values()))


def _set_num_labels(model: nn.Module, n: int) -> None:
    """Make the config (and ``model.num_labels``) describe a head with ``n`` outputs."""
    inner = _base(model)
    config = getattr(inner, "config", None)
    if config is None:
        return
    if config.num_labels != n:  # transformers redraws id2label/label2id for the new count
        config.num_labels = n
    config.problem_type = "regression" if n == 1 else "single_label_classification"
    if hasattr(inner, "num_labels"):
        inner.num_labels = n
