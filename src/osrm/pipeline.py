"""The main job: statistics → OSRM bases → adapters → merges → evaluation → report.

Every stage reads and writes one run directory and skips work whose artifact already exists for
the same inputs, so re-running a command after an interruption continues where it stopped.
Library modules take in-memory objects; only the stages (and the CLI) touch paths.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from osrm import __version__, distributed
from osrm.adapters import RUN_ADAPTER_FILES
from osrm.atomic import read_yaml
from osrm.config import ExperimentConfig, dump_config, load_config, parse_config
from osrm.errors import OsrmError
from osrm.manifest import verify_dir
from osrm.models import load_error, resolve_model
from osrm.report import markdown_table, table_columns
from osrm.rundir import check_run_dir, lock_run_dir, run_path, unlock_run_dir
from osrm.stages.common import (
    TaskStats,
    eval_task,
    load_adapter_model,
    load_base,
    lora_config,
    resolve_device,
    task_spec,
    write_json,
    write_text,
)
from osrm.stages.evaluation import (
    eval_stage,
    interference_stage,
    merge_grid,
    summarise_interference,
)
from osrm.stages.reporting import report_stage
from osrm.stages.statistics import stats_stage, subspace_stage, subspace_table
from osrm.stages.training import INIT_MODES, adapter_stage, train_task
from osrm.stats import StatsMeta, find_target_modules, input_dim
from osrm.tasks import get_task, task_sizes

log = logging.getLogger(__name__)
DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
DEMO_QUICK_CONFIG = Path(__file__).with_name("demo-quick.yaml")
# Sections that change artifacts: a run directory made with other values is not reused.
PINNED = ("seed", "model", "tasks", "lora", "stats", "subspace", "train", "eval")

__all__ = [
    "DEMO_CONFIG", "adapter_stage", "check_run_dir", "eval_task", "load_adapter_model",
    "load_base", "lora_config", "prepare", "release", "run", "stats_stage", "task_spec",
    "train_task",
]  # fmt: skip


def prepare(config: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load and validate the config, lock and create the run directory, record the config.

    Everything that can be checked without the model's weights is checked before anything is
    written: the run directory, the model (its config built on the meta device: device, target
    modules, rank), every task's data and the splits the run uses, the merge grid. A mistake
    therefore leaves no ``config.yaml`` behind that would refuse the corrected command. The run
    directory stays locked (:mod:`osrm.locking`) until :func:`release` or the process ends.

    Raises:
        OsrmError: a bad config, model, task or merge setting, a run directory that holds a
            run made with different settings, is not an osrm run, holds a symbolic link, or is
            in use by another osrm process.
    """
    cfg = load_config(config, overrides)
    run_dir = Path(cfg.run_dir)
    check_run_dir(run_dir)
    check_recorded(cfg, run_dir)
    for entry in cfg.tasks:
        if isinstance(entry, str):
            try:
                get_task(entry)
            except OsrmError as e:
                raise OsrmError(f"{config}: tasks: {e}") from None
    check_model(cfg)
    for task in cfg.task_names:  # cached: the stages reuse what is loaded here
        check_splits(cfg, task)
    merge_grid(cfg)
    distributed.barrier()  # every process compared against the old config.yaml
    lock_run_dir(run_dir)  # the main process: held for the whole command
    try:
        if distributed.is_main():
            check_recorded(cfg, run_dir)  # written by another process since the check above?
        write_text(run_path(run_dir, "config.yaml"), dump_config(cfg))  # by the main process
    except BaseException:
        unlock_run_dir(run_dir)
        raise
    distributed.barrier()
    torch.manual_seed(cfg.seed)
    return cfg


def release(cfg: ExperimentConfig) -> None:
    """Unlock the run directory taken by :func:`prepare`."""
    unlock_run_dir(Path(cfg.run_dir))


def check_recorded(cfg: ExperimentConfig, run_dir: Path) -> None:
    """A run directory's ``config.yaml``, if any, was made with the same pinned sections."""
    recorded = run_dir / "config.yaml"
    if not recorded.is_file():
        return
    old = recorded_config(recorded)
    new = cfg.model_dump(mode="json")
    changed = [k for k in PINNED if old.get(k) != new.get(k)]
    if changed:
        raise OsrmError(
            f"{run_dir} holds a run made with a different '{changed[0]}' section; use another "
            "run_dir or delete it (only the merge section may change between runs)"
        )


def check_model(cfg: ExperimentConfig) -> None:
    """The device exists, and the model's skeleton (its config on the meta device, no weights)
    has the target modules, with an input dimension of at least ``lora.rank``."""
    resolve_device(cfg.model.device)
    name = cfg.model.name
    path = resolve_model(name)
    if Path(path).is_dir() and not any(Path(path).glob("*.safetensors")):
        raise OsrmError(
            f"model.name {name!r}: {path} has no *.safetensors weights; osrm loads weights from "
            "safetensors only (pickle files such as pytorch_model.bin can run code when loaded)"
        )
    remote = cfg.model.trust_remote_code
    try:
        model_config = AutoConfig.from_pretrained(path, trust_remote_code=remote)
        with torch.device("meta"):
            skeleton = AutoModelForSequenceClassification.from_config(
                model_config, trust_remote_code=remote
            )
    except (OSError, ValueError) as e:
        raise load_error(name, path, e) from None
    try:
        check_rank(cfg, skeleton)
    except OsrmError as e:
        raise OsrmError(f"lora.target_modules: {e}" if "matches" in str(e) else str(e)) from None


def check_splits(cfg: ExperimentConfig, task: str) -> None:
    """The splits the run uses (train; ``eval.split``) have examples."""
    sizes = task_sizes(task_spec(cfg, task), seed=cfg.seed)
    for split in dict.fromkeys(("train", cfg.eval.split)):
        if sizes[split] == 0:
            hint = "add rows" if split == "train" else f"give a {split} file or raise its fraction"
            raise OsrmError(
                f"tasks: task {task!r} has no {split} examples (splits: "
                f"{', '.join(f'{k} {v}' for k, v in sizes.items())}); {hint}"
            )


def recorded_config(path: Path) -> dict:
    """A run directory's ``config.yaml`` with today's defaults filled in, so that a setting added
    by a later osrm version does not make an older run look different; as written if it no longer
    parses."""
    old = read_yaml(path, "the run's recorded config")
    try:
        return parse_config(old, str(path)).model_dump(mode="json")
    except OsrmError:
        return old


def clear_run_dir(run_dir: Path) -> None:
    """Delete an osrm run directory so that the next run starts from nothing (the benchmarks time
    the whole work, not a re-run that finds it done). Refuses a directory that is not ours."""
    check_run_dir(run_dir)
    if run_dir.is_dir():
        shutil.rmtree(run_dir)


def check_rank(cfg: ExperimentConfig, model: torch.nn.Module) -> None:
    """LoRA's rank cannot exceed a target module's input dimension (OSRM's bases are r of d)."""
    for name, module in find_target_modules(model, cfg.lora.target_modules).items():
        if cfg.lora.rank > input_dim(module):
            raise OsrmError(
                f"lora.rank {cfg.lora.rank} exceeds the input dimension {input_dim(module)} "
                f"of target module {name}"
            )


def discard_unverified_adapters(cfg: ExperimentConfig, run_dir: Path) -> None:
    """Remove adapter folders whose manifest does not verify, so the training stage redoes them.

    The stage itself trusts a folder whose ``training.json`` matches; this makes sure a folder
    with a missing, altered or truncated file never gets that far.
    """
    for init in cfg.lora.inits:
        for task in cfg.task_names:
            path = run_path(run_dir, "adapters", init, task)
            problem = verify_dir(path, RUN_ADAPTER_FILES) if path.exists() else None
            if problem:
                log.warning("adapter %s/%s: %s; training it again", init, task, problem)
                shutil.rmtree(path)


def statistics(cfg: ExperimentConfig) -> tuple[TaskStats, dict[str, StatsMeta], str]:
    """Statistics of every task, and the subspace diagnostics of ``subspace.modes`` (a table)."""
    run_dir = Path(cfg.run_dir)
    model, tokenizer = load_base(cfg)
    check_rank(cfg, model)
    stats, metas = stats_stage(cfg, run_dir, model, tokenizer)
    summary = subspace_stage(cfg, stats, metas)
    write_json(
        run_path(run_dir, "subspace_report.json"), {"osrm_version": __version__, "modes": summary}
    )
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
    try:
        return _stages(cfg, until)
    finally:
        release(cfg)


def _stages(cfg: ExperimentConfig, until: str) -> dict:
    run_dir = Path(cfg.run_dir)
    stats, metas, table = statistics(cfg)
    out: dict = {"cfg": cfg, "run_dir": run_dir, "subspace_table": table}
    if until == "stats":
        return out
    if distributed.is_main():  # one process removes; the others wait for it
        discard_unverified_adapters(cfg, run_dir)
    distributed.barrier()
    adapters = adapter_stage(cfg, run_dir, stats, metas)
    out["adapters"] = adapters
    if until == "train":
        return out
    stats_paths = {t: run_path(run_dir, "stats", f"{t}.safetensors") for t in cfg.task_names}
    results = eval_stage(cfg, run_dir, adapters, stats_paths)
    matrices = interference_stage(cfg, adapters, stats)
    write_json(run_path(run_dir, "interference.json"), matrices)
    out.update(results=results, interference=matrices)
    if until == "eval":
        return out
    if distributed.is_main():  # the report is files only: one process writes it
        out["report"] = report_stage(cfg, run_dir, results, matrices)
    distributed.barrier()
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
