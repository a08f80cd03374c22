"""What every stage shares: task specs, fingerprints, the adapted model and its scores."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from torch import nn

from osrm.adapters import load_adapter
from osrm.config import ExperimentConfig
from osrm.errors import OsrmError
from osrm.evaluate import evaluate
from osrm.models import load_base
from osrm.stats import LayerStats
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
