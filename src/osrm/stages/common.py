"""What every stage shares: task specs, the base model, fingerprints, JSON artifacts."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from peft import LoraConfig
from torch import nn
from transformers import PreTrainedTokenizerBase

from osrm import distributed
from osrm.adapters import load_adapter
from osrm.atomic import atomic_file
from osrm.config import ExperimentConfig
from osrm.errors import OsrmError
from osrm.evaluate import evaluate
from osrm.models import load_model
from osrm.stats import (
    LayerStats,
)
from osrm.tasks import TaskSpec, get_task, task_from_dict

log = logging.getLogger(__name__)

TaskStats = dict[str, dict[str, LayerStats]]


def task_spec(cfg: ExperimentConfig, name: str) -> TaskSpec:
    """The spec of a configured task: a registry entry or the user's block."""
    for entry in cfg.tasks:
        if entry == name:
            return get_task(name)
        if isinstance(entry, dict) and entry.get("name") == name:
            return task_from_dict(entry)
    raise OsrmError(f"task {name!r} is not in the config's tasks {cfg.task_names}")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> this process's CUDA device when there is one (launchers: one per process)."""
    if name == "auto":
        if distributed.world_size() > 1:
            return distributed.state().device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OsrmError(f"model.device {name!r}: no CUDA device is available")
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise OsrmError(
            f"model.device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise OsrmError(f"model.device {name!r}: MPS is not available on this machine")
    return device


def load_base(
    cfg: ExperimentConfig, num_labels: int = 2
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The frozen base model on its device, and the tokenizer."""
    device = resolve_device(cfg.model.device)
    model, tokenizer = load_model(
        cfg.model.name,
        num_labels,
        dtype=getattr(torch, cfg.model.dtype),
        trust_remote_code=cfg.model.trust_remote_code,
        device=device,
    )
    return model.to(device).eval(), tokenizer


def lora_config(cfg: ExperimentConfig) -> LoraConfig:
    """The peft config of every adapter in the experiment (head kept via modules_to_save)."""
    return LoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="SEQ_CLS",
    )


def run_fingerprint(cfg: ExperimentConfig, *parts: object) -> str:
    """Hash of what determines an artifact: model, LoRA and training settings, seed, parts."""
    payload = [cfg.model.model_dump(), cfg.lora.model_dump(), cfg.train.model_dump(), cfg.seed]
    blob = json.dumps([*payload, *map(str, parts)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_adapter_model(cfg: ExperimentConfig, adapter_dir: Path, task: str):
    """Base model + saved adapter (with its head) through vanilla ``PeftModel.from_pretrained``."""
    model, tokenizer = load_base(cfg, task_spec(cfg, task).num_labels)
    return load_adapter(model, adapter_dir).eval(), tokenizer


def eval_task(cfg: ExperimentConfig, model: nn.Module, tokenizer, task: str) -> dict[str, float]:
    """Metrics of ``model`` on ``task``'s evaluation split as configured."""
    return evaluate(
        model,
        task_spec(cfg, task),
        cfg.eval.split,
        tokenizer=tokenizer,
        max_length=cfg.train.max_length,
        batch_size=cfg.eval.batch_size,
        seed=cfg.seed,
        max_examples=cfg.eval.max_eval_examples,
        progress=True,
    )


def write_text(path: Path, text: str) -> Path:
    """Text artifact, written atomically (by the main process only)."""
    if distributed.is_main():
        with atomic_file(path) as tmp:
            tmp.write_text(text)
    return path


def write_json(path: Path, data: object) -> None:
    """JSON artifact, written atomically (by the main process only)."""
    write_text(path, json.dumps(data, indent=2) + "\n")
