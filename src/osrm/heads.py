"""Per-task heads: read from an adapter's ``modules_to_save`` and swapped onto a backbone.

Heads (a BERT ``classifier``, a RoBERTa ``classifier.dense``/``out_proj``, a Llama ``score``) are
trained with each task's adapter and never merged. Evaluating a merged backbone on task t means
putting task t's head on it, which :func:`use_head` does without copying the backbone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from osrm.errors import OsrmError

PEFT_PREFIX = "base_model.model."
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def adapter_head(adapter_dir: str | Path) -> dict[str, Tensor]:
    """The head saved in a peft adapter: base-model parameter name -> tensor.

    peft stores ``modules_to_save`` under ``base_model.model.<name>``; everything that is not a
    LoRA factor is the head.
    """
    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise OsrmError(f"{path}: cannot read adapter weights ({e})") from None
    head = {k.removeprefix(PEFT_PREFIX): v for k, v in weights.items() if "lora_" not in k}
    if not head:
        raise OsrmError(f"{path}: holds no task head (train with task_type='SEQ_CLS')")
    return head


@contextmanager
def use_head(model: nn.Module, head: Mapping[str, Tensor]) -> Iterator[nn.Module]:
    """Temporarily replace the named head parameters of a plain transformers model.

    Shapes may differ from the current head (tasks with other numbers of labels): parameters
    are swapped, not copied into, and restored on exit.
    """
    saved = {}
    try:
        for name, value in head.items():
            module_name, _, param_name = name.rpartition(".")
            try:
                module = model.get_submodule(module_name)
                old = getattr(module, param_name)
            except AttributeError:
                raise OsrmError(f"head parameter {name!r} does not exist in the model") from None
            saved[name] = (module, param_name, old)
            new = value.to(device=old.device, dtype=old.dtype)
            setattr(module, param_name, nn.Parameter(new, requires_grad=False))
        yield model
    finally:
        for module, param_name, old in saved.values():
            setattr(module, param_name, old)


def head_outputs(head: Mapping[str, Tensor]) -> int:
    """Number of outputs of a head (its last layer's rows): classes, or 1 for regression."""
    last = [v for k, v in head.items() if k.endswith("weight")][-1]
    return int(last.shape[0])


__all__ = ["adapter_head", "head_outputs", "use_head"]
