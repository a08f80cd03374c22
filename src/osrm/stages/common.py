"""The spec of a configured task: a registry entry or the user's block."""

from __future__ import annotations

from osrm.config import ExperimentConfig
from osrm.errors import OsrmError
from osrm.tasks.registry import get_task, task_from_dict
from osrm.tasks.spec import TaskSpec


def task_spec(cfg: ExperimentConfig, name: str) -> TaskSpec:
    """The spec of a configured task: a registry entry or the user's block."""
    for entry in cfg.tasks:
        if entry == name:
            return get_task(name)
        if isinstance(entry, dict) and entry.get("name") == name:
            return task_from_dict(entry)
    raise OsrmError(f"task {name!r} is not in the config's tasks {cfg.task_names}")
