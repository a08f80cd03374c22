"""The main job: statistics → OSRM bases → adapters → merges → evaluation → report.

Every stage reads and writes one run directory and skips work whose artifact already exists for
the same inputs, so re-running a command after an interruption continues where it stopped.
Library modules take in-memory objects; only the stages (and the CLI) touch paths.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import yaml

from osrm import __version__
from osrm.config import ExperimentConfig, dump_config, load_config
from osrm.errors import OsrmError
from osrm.report import markdown_table, table_columns
from osrm.stages.common import (
    TaskStats,
    eval_task,
    load_adapter_model,
    load_base,
    lora_config,
    task_spec,
    write_json,
    write_text,
)
from osrm.stages.evaluation import eval_stage, interference_stage, summarise_interference
from osrm.stages.reporting import report_stage
from osrm.stages.statistics import stats_stage, subspace_stage, subspace_table
from osrm.stages.training import INIT_MODES, adapter_stage, train_task
from osrm.stats import StatsMeta

log = logging.getLogger(__name__)
DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
DEMO_QUICK_CONFIG = Path(__file__).with_name("demo-quick.yaml")
# Sections that change artifacts: a run directory made with other values is not reused.
PINNED = ("seed", "model", "tasks", "lora", "stats", "subspace", "train", "eval")

__all__ = [
    "DEMO_CONFIG", "adapter_stage", "eval_task", "load_adapter_model", "load_base", "lora_config",
    "prepare", "run", "stats_stage", "task_spec", "train_task",
]  # fmt: skip


def prepare(config: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load and validate the config, create the run directory and record the resolved config.

    Raises:
        OsrmError: the run directory holds a run made with different settings.
    """
    cfg = load_config(config, overrides)
    run_dir = Path(cfg.run_dir)
    recorded = run_dir / "config.yaml"
    if recorded.is_file():
        old = yaml.safe_load(recorded.read_text()) or {}
        new = cfg.model_dump(mode="json")
        changed = [k for k in PINNED if old.get(k) != new.get(k)]
        if changed:
            raise OsrmError(
                f"{run_dir} holds a run made with a different '{changed[0]}' section; use another "
                "run_dir or delete it (only the merge section may change between runs)"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(recorded, dump_config(cfg))
    torch.manual_seed(cfg.seed)
    return cfg


def statistics(cfg: ExperimentConfig) -> tuple[TaskStats, dict[str, StatsMeta], str]:
    """Statistics of every task, and the subspace diagnostics of ``subspace.modes`` (a table)."""
    run_dir = Path(cfg.run_dir)
    model, tokenizer = load_base(cfg)
    stats, metas = stats_stage(cfg, run_dir, model, tokenizer)
    summary = subspace_stage(cfg, stats, metas)
    write_json(run_dir / "subspace_report.json", {"osrm_version": __version__, "modes": summary})
    d_in = next(iter(next(iter(stats.values())).values())).d_in
    return stats, metas, subspace_table(summary, (cfg.lora.rank, d_in))


def run(
    config: str | Path, overrides: list[str] | tuple[str, ...] = (), *, until: str = "report"
) -> dict:
    """Run the stages up to ``until`` (``stats``, ``train``, ``eval`` or ``report``)."""
    stages = ("stats", "train", "eval", "report")
    if until not in stages:
        raise OsrmError(f"until {until!r}: expected one of {list(stages)}")
    cfg = prepare(config, overrides)
    run_dir = Path(cfg.run_dir)
    stats, metas, table = statistics(cfg)
    out: dict = {"cfg": cfg, "run_dir": run_dir, "subspace_table": table}
    if until == "stats":
        return out
    adapters = adapter_stage(cfg, run_dir, stats, metas)
    out["adapters"] = adapters
    if until == "train":
        return out
    stats_paths = {t: run_dir / "stats" / f"{t}.safetensors" for t in cfg.task_names}
    results = eval_stage(cfg, run_dir, adapters, stats_paths)
    matrices = interference_stage(cfg, adapters, stats)
    write_json(run_dir / "interference.json", matrices)
    out.update(results=results, interference=matrices)
    if until == "eval":
        return out
    out["report"] = report_stage(cfg, run_dir, results, matrices)
    return out


def print_summary(out: dict) -> None:
    """The results table and where the report is (what `osrm run` and `osrm demo` print)."""
    cfg: ExperimentConfig = out["cfg"]
    report = out.get("report")
    if report is None:
        return
    print(f"\n{markdown_table(report['rows'], table_columns(cfg.task_names))}\n")
    means = summarise_interference(out["interference"])
    print(
        "mean cross-task interference ratio: " + ", ".join(f"{i} {v:.3f}" for i, v in means.items())
    )
    paths = report["paths"]
    print(f"report: {paths['html']} (tables: {paths['markdown']}, {paths['csv']})")


def demo(
    run_dir: str | None = None, overrides: list[str] | tuple[str, ...] = (), quick: bool = False
) -> dict:
    """The embedded default on real offline data; ``quick``: 3 tasks with small limits."""
    config = DEMO_QUICK_CONFIG if quick else DEMO_CONFIG
    out = run(config, [*overrides, *([f"run_dir={run_dir}"] if run_dir else [])])
    print_summary(out)
    return out


__all__ += ["INIT_MODES", "demo", "print_summary", "statistics"]
