"""Training checkpoints as one safetensors file (no pickles): weights, optimizer, RNG, position.

Tensors: ``param.<name>`` (trainable parameters), ``optim.<index>.<key>`` (AdamW moments and
step counters), ``rng.cpu`` / ``rng.cuda``. Metadata (JSON): the loop position, the optimizer's
param groups and the scheduler state, and ``sha256`` of all of it: a checkpoint whose content
no longer matches is ignored (training starts over) rather than resumed from.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from osrm.artifacts import write_safetensors
from osrm.errors import OsrmError, one_line

log = logging.getLogger(__name__)
FORMAT = "osrm.checkpoint/1"
FILE = "checkpoint.safetensors"


@dataclass
class Checkpoint:
    """The training loop's position (mutable: the loop advances it)."""

    step: int
    epoch: int
    offset: int  # batches of ``epoch`` already consumed
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    fingerprint: str = ""


def save_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: Checkpoint,
) -> None:
    """Write ``directory/checkpoint.safetensors`` atomically."""
    tensors = {
        f"param.{n}": p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
    }
    opt = optimizer.state_dict()
    for index, slots in opt["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{index}.{key}"] = value.detach().clone()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    metadata = {
        "format": FORMAT,
        "state": json.dumps(asdict(state)),
        "param_groups": json.dumps(opt["param_groups"]),
        "scheduler": json.dumps(scheduler.state_dict()),
    }
    metadata["sha256"] = content_digest(tensors, metadata)
    write_safetensors(directory / FILE, tensors, metadata)


def load_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    fingerprint: str,
    last_step: int | None = None,
) -> Checkpoint | None:
    """Restore a checkpoint into model/optimizer/scheduler/RNG; None if there is none to resume.

    A checkpoint of another run (different fingerprint), or one that is unreadable or does not
    match its sha256, is ignored with a warning: training then starts over, which gives the
    same result, only later. So is one past ``last_step`` (the run must pass a step before it).
    """
    path = directory / FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        state = Checkpoint(**json.loads(metadata["state"]))
        groups, sched = json.loads(metadata["param_groups"]), json.loads(metadata["scheduler"])
    except (SafetensorError, OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        log.warning("ignoring %s: unreadable (%s); starting over", path, one_line(e))
        return None
    if metadata.get("format") != FORMAT or state.fingerprint != fingerprint:
        log.warning("ignoring %s: it belongs to another run", path)
        return None
    if metadata.get("sha256") != content_digest(tensors, metadata):
        log.warning("ignoring %s: its content does not match its sha256; starting over", path)
        return None
    if last_step is not None and state.step > last_step:
        log.info("ignoring %s: step %d is past step %d, to be saved; starting over", path,
                 state.step, last_step + 1)  # fmt: skip
        return None
    _restore_params(path, model, tensors)
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, slot = key.split(".", 2)
            slots.setdefault(int(index), {})[slot] = value
    optimizer.load_state_dict({"state": slots, "param_groups": groups})
    scheduler.load_state_dict(sched)
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    log.info("resuming from %s at step %d", path, state.step)
    return state


def content_digest(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """sha256 over every tensor (name, dtype, shape, bytes) and the metadata but ``sha256``."""
    digest = hashlib.sha256()
    for key in sorted(metadata):
        if key != "sha256":
            digest.update(f"{key}={metadata[key]}\n".encode())
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _restore_params(path: Path, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = {k.removeprefix("param."): v for k, v in tensors.items() if k.startswith("param.")}
    if saved.keys() != params.keys():
        diff = sorted(saved.keys() ^ params.keys())[:3]
        raise OsrmError(f"{path}: trainable parameters differ from the model's (e.g. {diff})")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(saved[name])
