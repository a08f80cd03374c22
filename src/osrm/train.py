"""Fine-tuning one adapter: one explicit loop, checkpointed and exactly resumable.

AdamW over the trainable parameters (LoRA factors and the task head), a linear schedule with
warm-up, gradient accumulation, clipping and bf16 autocast on GPUs. The data order of epoch e is
a function of (seed, e) alone, and a checkpoint stores the trainable weights, the optimizer and
scheduler states, the RNG state and the position in the epoch, so an interrupted run resumes and
ends with the same weights as an uninterrupted one (on the CPU, bit for bit).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from osrm.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from osrm.config import TrainSection
from osrm.errors import OsrmError

log = logging.getLogger(__name__)

EpochBatches = Callable[[int], Iterable[Mapping[str, Tensor]]]


@dataclass(frozen=True)
class TrainResult:
    """What a training run did; ``losses`` holds one mean loss per optimizer step."""

    losses: list[float]
    steps: int
    seconds: float
    tokens: int
    resumed_from: int


def use_bf16(cfg: TrainSection, device: torch.device) -> bool:
    """bf16 autocast: on by default on GPUs that support it, never on the CPU."""
    if cfg.precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return cfg.precision == "bf16"


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters that receive gradients, by name (LoRA factors, head)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def train(
    model: nn.Module,
    epoch_batches: EpochBatches,
    cfg: TrainSection,
    *,
    checkpoint_dir: str | Path | None = None,
    fingerprint: str = "",
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``model``'s trainable parameters for ``cfg.steps`` optimizer steps.

    Args:
        model: e.g. a ``PeftModel`` from :func:`osrm.adapters.attach_lora`; its forward takes
            the batch (with ``labels``) and returns ``.loss``.
        epoch_batches: ``epoch -> iterable of batches`` of ``cfg.batch_size / cfg.grad_accum``
            examples; must give the same order for the same epoch (seeded).
        cfg: the training section of the config.
        checkpoint_dir: where to checkpoint every ``cfg.checkpoint_every`` steps and resume from.
        fingerprint: identifies the run (config, task, init); a checkpoint with another
            fingerprint is ignored rather than resumed.
        on_step: called as ``on_step(step, loss)`` after every optimizer step.

    Returns:
        The loss history and counters.
    """
    device = next(model.parameters()).device
    params = trainable(model)
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = math.ceil(cfg.warmup_ratio * cfg.steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, cfg.steps)
    state = Checkpoint(step=0, epoch=0, offset=0, losses=[], tokens=0, fingerprint=fingerprint)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, optimizer, scheduler, fingerprint) or state
    resumed_from = state.step
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(cfg, device))
    bar = tqdm(total=cfg.steps, initial=state.step, desc="train", unit="step", disable=not progress)
    model.train()
    start, tokens0 = time.perf_counter(), state.tokens
    micro, pending = 0, 0.0
    optimizer.zero_grad(set_to_none=True)
    while state.step < cfg.steps:
        position = state.offset
        for batch in islice(epoch_batches(state.epoch), state.offset, None):
            position += 1
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                loss = model(**batch).loss / cfg.grad_accum
            loss.backward()
            pending += float(loss.detach())
            state.tokens += int(batch["attention_mask"].sum())
            micro += 1
            if micro % cfg.grad_accum:
                continue
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params.values(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.losses.append(pending)
            state.offset = position
            if on_step is not None:
                on_step(state.step, pending)
            pending = 0.0
            elapsed = time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(
                loss=f"{state.losses[-1]:.4f}", tok_s=f"{(state.tokens - tokens0) / elapsed:.0f}"
            )
            due = cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0
            if ckpt is not None and due and state.step < cfg.steps:
                save_checkpoint(ckpt, model, optimizer, scheduler, state)
            if state.step >= cfg.steps:
                break
        else:  # epoch exhausted: the next one starts at its beginning
            state.epoch, state.offset = state.epoch + 1, 0
            if position == 0:
                raise OsrmError("training data is empty: epoch_batches returned no batches")
    bar.close()
    model.eval()
    seconds = time.perf_counter() - start
    return TrainResult(state.losses, state.step, seconds, state.tokens, resumed_from)
