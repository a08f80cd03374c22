"""Fine-tuning one adapter: one explicit loop, checkpointed and exactly resumable.

AdamW over the trainable parameters (LoRA factors and the task head), a linear schedule with
warm-up, gradient accumulation, clipping and bf16 autocast on GPUs. The data order of epoch e is
a function of (seed, e) alone, and a checkpoint stores the trainable weights, the optimizer and
scheduler states, the RNG state and the position in the epoch, so an interrupted run resumes and
ends with the same weights as an uninterrupted one (on the CPU, bit for bit).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import Tensor, nn
from transformers import get_linear_schedule_with_warmup

from osrm import distributed
from osrm.config import TrainSection
from osrm.errors import OsrmError
from osrm.progress import tqdm
from osrm.train_state import Checkpoint, load_checkpoint, save_checkpoint

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


def _checkpoint_dir(acc: Accelerator, checkpoint_dir: str | Path | None) -> Path | None:
    if checkpoint_dir is not None and acc.distributed_type == DistributedType.FSDP:
        # FSDP shards parameters and optimizer state; osrm's single-file checkpoints hold full
        # tensors, so an FSDP run does not checkpoint (it restarts if interrupted).
        log.warning("checkpoints are off under FSDP: an interrupted run starts over")
        return None
    return Path(checkpoint_dir) if checkpoint_dir is not None else None


def train(
    model: nn.Module,
    epoch_batches: EpochBatches,
    cfg: TrainSection,
    *,
    checkpoint_dir: str | Path | None = None,
    fingerprint: str = "",
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    stop_at: int | None = None,
    budgets: Collection[int] = (),
    on_budget: Callable[[TrainResult], None] | None = None,
    penalty: Callable[[], Tensor] | None = None,
) -> TrainResult:
    """Train ``model``'s trainable parameters for ``cfg.steps`` optimizer steps.

    ``model`` (e.g. a ``PeftModel`` from :func:`osrm.adapters.attach_lora`) takes a batch with
    ``labels`` and returns ``.loss``. ``epoch_batches(epoch)`` yields batches of
    ``cfg.batch_size / cfg.grad_accum`` examples, in the same order for the same epoch (seeded).
    ``checkpoint_dir`` is checkpointed every ``cfg.checkpoint_every`` steps and resumed from when
    its checkpoint has the same ``fingerprint`` (config, task, init). ``on_step(step, loss)``
    runs after every optimizer step. ``penalty()`` (e.g.
    :func:`osrm.constraints.interference_penalty`) is added to every micro-batch's loss;
    ``losses`` record the task loss alone.

    ``stop_at`` ends the run after that step, on the schedule of ``cfg.steps`` (the same
    trajectory, cut short). ``on_budget(result so far)`` runs at each step of ``budgets``; a
    checkpoint past the first budget (or past ``stop_at``) is not resumed from, so that the run
    passes through every budget.
    """
    device = next(model.parameters()).device
    acc = distributed.accelerator("bf16" if use_bf16(cfg, device) else "no")
    distributed.check_divisible(cfg.batch_size // cfg.grad_accum)
    wrapped = acc.prepare(model)  # DDP / FSDP / DeepSpeed per the launch config; as is alone
    params = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, math.ceil(cfg.warmup_ratio * cfg.steps), cfg.steps
    )
    state = Checkpoint(step=0, epoch=0, offset=0, losses=[], tokens=0, fingerprint=fingerprint)
    ckpt = _checkpoint_dir(acc, checkpoint_dir)
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    if ckpt is not None:
        last = min([end, *(b - 1 for b in budgets)])  # the last step it may resume from
        state = load_checkpoint(ckpt, model, optimizer, scheduler, fingerprint, last) or state
    resumed_from, start, tokens0 = state.step, time.perf_counter(), state.tokens
    bar = tqdm(total=end, initial=state.step, desc="train", unit="step",
               disable=not (progress and distributed.is_main()))  # fmt: skip
    wrapped.train()
    micro, pending = 0, 0.0
    optimizer.zero_grad(set_to_none=True)
    while state.step < end:
        position = state.offset
        for batch in islice(epoch_batches(state.epoch), state.offset, None):
            position += 1
            local = distributed.local_slice(batch)
            if local is None:  # fewer rows than processes: skipped by every process alike
                continue
            local = {k: v.to(acc.device) for k, v in local.items()}
            sync = (micro + 1) % cfg.grad_accum == 0
            # gradients are all-reduced only on the last micro-batch of a step
            with contextlib.nullcontext() if sync else acc.no_sync(wrapped), acc.autocast():
                loss = wrapped(**local).loss / cfg.grad_accum
                acc.backward(loss if penalty is None else loss + penalty() / cfg.grad_accum)
            pending += float(loss.detach())
            state.tokens += int(distributed.all_sum(float(local["attention_mask"].sum())))
            micro += 1
            if not sync:
                continue
            if cfg.max_grad_norm is not None:
                acc.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step, state.offset = state.step + 1, position
            state.losses.append(distributed.all_sum(pending) / distributed.world_size())
            pending = 0.0
            if on_budget is not None and state.step in budgets:
                on_budget(_result(state, start, resumed_from))
            if on_step is not None:
                on_step(state.step, state.losses[-1])
            bar.update(1)
            rate = (state.tokens - tokens0) / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{state.losses[-1]:.4f}", tok_s=f"{rate:.0f}")
            due = cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0
            if ckpt is not None and due and state.step < end and distributed.is_main():
                save_checkpoint(ckpt, model, optimizer, scheduler, state)
            if state.step >= end:
                break
        else:  # epoch exhausted: the next one starts at its beginning
            state.epoch, state.offset = state.epoch + 1, 0
            if position == 0:
                raise OsrmError("training data is empty: epoch_batches returned no batches")
    bar.close()
    wrapped.eval()
    return _result(state, start, resumed_from)


def _result(state: Checkpoint, start: float, resumed_from: int) -> TrainResult:
    """The run so far (a copy: the loop goes on appending to ``state.losses``)."""
    seconds = time.perf_counter() - start
    return TrainResult(list(state.losses), state.step, seconds, state.tokens, resumed_from)
