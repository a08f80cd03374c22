"""Scale-out on the standard engine: Hugging Face Accelerate over torch.distributed.

Launched with ``accelerate launch`` or ``torchrun``, every process runs the same pipeline:

- statistics: each process collects its contiguous shard of the examples; ``xtx``, ``xsum`` and
  ``count`` are summed with an all-reduce (no tokens are gathered), so every process holds the
  statistics of all examples;
- training: Accelerate wraps the model (DDP, or FSDP/DeepSpeed from an Accelerate config); each
  global micro-batch is split across processes, so the global batch is what the config says;
- evaluation: each process scores its shard, predictions are gathered;
- merging: modules are split across processes and the merged ΔW's broadcast;
- only the main process writes artifacts; the others wait at a barrier.

Single-process runs go through the same functions, which then do nothing extra.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from accelerate import Accelerator, PartialState
from datasets import Dataset
from torch import Tensor

from osrm.errors import OsrmError
from osrm.stats import LayerStats


@functools.cache
def state() -> PartialState:
    """The process state; initialises the process group under a launcher (gloo on CPUs)."""
    return PartialState(cpu=not torch.cuda.is_available())


def world_size() -> int:
    return state().num_processes


def rank() -> int:
    return state().process_index


def is_main() -> bool:
    """Whether this process writes artifacts (always true without a launcher)."""
    return state().is_main_process


def barrier() -> None:
    """Wait until every process arrives (no-op in a single process)."""
    if world_size() > 1:
        state().wait_for_everyone()


@functools.cache
def accelerator(mixed_precision: str = "no") -> Accelerator:
    """One Accelerator per process (its state is a singleton): DDP/FSDP from the launch config."""
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision)


def shard(dataset: Dataset) -> Dataset:
    """This process's contiguous share of the examples (all of them in a single process)."""
    if world_size() == 1:
        return dataset
    return dataset.shard(num_shards=world_size(), index=rank(), contiguous=True)


def local_slice(batch: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """This process's rows of a global batch (None when the batch has fewer rows than processes).

    The global batch is padded once, before splitting, so every row is computed exactly as in a
    single process; DDP's gradient average then equals the single-process mean when the rows
    split evenly.
    """
    world = world_size()
    if world == 1:
        return dict(batch)
    rows = len(next(iter(batch.values())))
    if rows < world:
        return None
    return {k: torch.tensor_split(v, world)[rank()] for k, v in batch.items()}


def all_reduce_stats(
    stats: Mapping[str, LayerStats], device: torch.device
) -> dict[str, LayerStats]:
    """Sum every process's statistics (float64 all-reduce on ``device``, module by module).

    Modules sharing one accumulation stay shared. Results move to the CPU one module at a time.
    """
    if world_size() == 1:
        return dict(stats)
    reduced: dict[int, LayerStats] = {}
    for s in stats.values():
        if id(s) in reduced:
            continue
        xtx, xsum = s.xtx.to(device).clone(), s.xsum.to(device).clone()
        count = torch.tensor([s.count], dtype=torch.float64, device=device)
        for t in (xtx, xsum, count):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        reduced[id(s)] = LayerStats(xtx.cpu(), xsum.cpu(), int(count.item()))
    return {name: reduced[id(s)] for name, s in stats.items()}


def all_sum(value: float) -> float:
    """Sum of a number over processes."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=state().device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def gather_arrays(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Concatenate each array over processes, in rank order (the shards' order)."""
    if world_size() == 1:
        return arrays
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, [a.tolist() for a in arrays])
    return tuple(np.concatenate([np.asarray(g[i]) for g in gathered]) for i in range(len(arrays)))


def split_merge(
    names: Sequence[str], merge_one: Callable[[str], Tensor], device: torch.device
) -> Iterable[tuple[str, Tensor]]:
    """Merge modules round-robin across processes and broadcast each result to all of them.

    Args:
        names: every module name, in the same order on every process.
        merge_one: computes the merged ΔW of one module (called only by its owner).
    """
    world = world_size()
    for i, name in enumerate(names):
        owner = i % world
        if world == 1:
            yield name, merge_one(name)
            continue
        merged = merge_one(name).to(device, torch.float32) if rank() == owner else None
        shape = torch.tensor(merged.shape if merged is not None else (0, 0), device=device)
        dist.broadcast(shape, src=owner)
        if merged is None:
            merged = torch.empty(tuple(int(x) for x in shape), dtype=torch.float32, device=device)
        dist.broadcast(merged.contiguous(), src=owner)
        yield name, merged.cpu()


def shutdown(clean: bool = True) -> None:
    """End the process group before exit (waiting for the others first when all went well).

    Leaving gloo's threads running at interpreter exit aborts the process ("terminate called
    without an active exception") when another rank still works.
    """
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def check_divisible(micro_batch: int) -> None:
    """The global micro-batch must split evenly across processes (same batch as one process)."""
    if micro_batch % world_size():
        raise OsrmError(
            f"train.batch_size / train.grad_accum = {micro_batch} examples is not divisible by "
            f"{world_size()} processes; change train.batch_size or the number of processes"
        )
