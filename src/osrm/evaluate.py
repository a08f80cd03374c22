"""Scoring a model on a task: batched, no-grad, dynamic padding, scikit-learn/scipy metrics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from datasets import Dataset
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from osrm import distributed
from osrm.errors import OsrmError
from osrm.generative import evaluate_generative
from osrm.guards import check_finite
from osrm.metrics import compute_metrics
from osrm.models import cap_tokenizer
from osrm.progress import tqdm
from osrm.tasks.batching import batches, encode
from osrm.tasks.registry import get_task, load_task
from osrm.tasks.spec import TaskSpec


def logits_over(
    model: nn.Module, loader: Iterable[Mapping[str, Tensor]], *, progress: bool = False
) -> tuple[Tensor, np.ndarray]:
    """The model's outputs over a loader: (n, k) float32 logits on the CPU and the (n,) labels."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs, labels = [], []
    try:
        with torch.no_grad():
            bar = tqdm(loader, desc="eval", unit="batch", disable=not progress, leave=False)
            for batch in bar:
                inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
                logits = model(**inputs).logits.float()
                if not bool(torch.isfinite(logits).all()):  # e.g. an activation overflow
                    raise OsrmError("the model's outputs (logits) hold NaN or Inf; not scored")
                outputs.append(logits.cpu())
                labels.append(batch["labels"])
    finally:
        model.train(was_training)
    return torch.cat(outputs), torch.cat(labels).cpu().numpy()


def predict(
    model: nn.Module,
    loader: Iterable[Mapping[str, Tensor]],
    *,
    regression: bool,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels over a loader.

    Returns:
        (n,) predicted class ids (argmax of the logits) or regression values, and (n,) labels.
    """
    logits, labels = logits_over(model, loader, progress=progress)
    if regression and logits.shape[-1] != 1:
        raise OsrmError(f"regression task but the head has {logits.shape[-1]} outputs")
    preds = logits[:, 0] if regression else logits.argmax(-1)
    return preds.numpy(), labels


def evaluate(
    model: nn.Module,
    task: str | TaskSpec,
    split: str = "test",
    *,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 128,
    batch_size: int = 64,
    seed: int = 0,
    max_examples: int | None = None,
    data: Dataset | None = None,
    progress: bool = False,
    exact_match: bool = False,
) -> dict[str, float]:
    """Metric name -> value of ``model`` (with ``task``'s head) on a split of ``task``.

    ``model`` is a sequence-classification model (a ``PeftModel`` or a backbone under
    :func:`osrm.heads.use_head`); ``seed`` and ``max_examples`` are as for
    :func:`osrm.tasks.registry.load_task`, or ``data`` is an already standardised split.
    """
    spec = get_task(task)
    # a merge that overflowed gives Inf/NaN weights: no score is ever computed from them
    check_finite(model.named_parameters(), "model weights (not scored)")
    if data is None:
        data = load_task(spec, split, seed=seed, max_examples=max_examples)
    if len(data) == 0:
        raise OsrmError(f"task {spec.name!r}: split {split!r} is empty")
    if spec.format == "generate":  # no head: the most likely verbaliser (whole split each process)
        return evaluate_generative(model, spec, data, tokenizer=tokenizer, max_length=max_length,
                                   batch_size=batch_size, exact_match=exact_match)  # fmt: skip
    # each process scores its shard (all of it alone); predictions are gathered before metrics
    cap_tokenizer(tokenizer, model.config)  # a max_length above the model's positions: cut
    encoded = encode(distributed.shard(data), tokenizer, max_length)
    # grouping by length wastes little compute on padding; the order does not change metrics
    loader = batches(encoded, tokenizer, batch_size, group_by_length=True)
    show = progress and distributed.is_main()
    preds, labels = predict(model, loader, regression=spec.is_regression, progress=show)
    preds, labels = distributed.gather_arrays(preds, labels)
    return compute_metrics(spec.metrics, preds, labels)
