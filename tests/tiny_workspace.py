"""A tiny `osrm run` workspace (random BERT, three CSV tasks) shared by the reliability tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from conftest import save_tiny_bert, write_synthetic_tasks

MERGE = {
    "task_arithmetic": {"scale": 0.5},
    "dare_ties": {"density": 0.5},  # a random method: its seeding must be reproducible
    "regmean": {"alpha": 0.9},  # reads the statistics files
}


def make_workspace(
    root: Path, inits: tuple[str, ...] = ("lora", "osrm"), n_tasks: int = 3, **sections
) -> Path:
    """Model, data and ``tiny.yaml`` under ``root``; returns the config path.

    ``n_tasks`` of ``low``, ``high``, ``reg`` are used; ``sections`` replace top-level config
    sections (e.g. ``merge={...}``).
    """
    root.mkdir(parents=True, exist_ok=True)
    model_dir = save_tiny_bert(root / "tiny-bert")
    (root / "data").mkdir(exist_ok=True)
    config = {
        "run_dir": str(root / "run"),
        "seed": 0,
        "model": {"name": str(model_dir)},
        "tasks": write_synthetic_tasks(root / "data")[:n_tasks],
        "lora": {"rank": 4, "alpha": 8, "target_modules": ["query", "value"], "inits": list(inits)},
        "stats": {"examples": 32, "batch_size": 16, "max_length": 16},
        "train": {"steps": 8, "lr": 1e-2, "batch_size": 8, "max_length": 16, "checkpoint_every": 4},
        "merge": {"methods": MERGE, "save": True},
        "eval": {"max_eval_examples": 16, "batch_size": 16},
        **sections,
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below ``root`` (hidden ones included)."""
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def leftovers(root: Path) -> list[str]:
    """Hidden temporary siblings left by an interrupted atomic write (never read by osrm)."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob(".*")
        if p.name.endswith((".tmp", ".old"))
    )
