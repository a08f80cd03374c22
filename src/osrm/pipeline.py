"""The run-directory commands: the main job (statistics → OSRM bases → adapters → merges →
evaluation → report), its stages alone, the demo and rebuilding a report. The commands on the
user's own adapters (merge, retrofit, evaluate one model) are in :mod:`osrm.adapter_commands`.

Every stage reads and writes one run directory (:mod:`osrm.rundir`) and skips work whose
artifact already exists for the same inputs, so re-running a command after an interruption
continues where it stopped. Library modules take in-memory objects; only the stages
(:mod:`osrm.stages`), these recipes and the CLI touch paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from osrm import __version__, distributed
from osrm.config import ExperimentConfig, load_config
from osrm.diagnostics import summarise_interference
from osrm.errors import OsrmError
from osrm.models import load_base
from osrm.report import (
    markdown_table,
    read_budget_diagnostics,
    read_interference,
    read_results,
    subspace_table,
)
from osrm.rundir import (
    BUDGET_DIAGNOSTICS_FILE,
    CONFIG_FILE,
    INTERFERENCE_FILE,
    RESULTS_FILE,
    SUBSPACE_REPORT_FILE,
    discard_unverified_adapters,
    run_dir_locked,
    run_path,
    unlock_run_dir,
    write_json,
)
from osrm.stages.diagnostics import budget_stage, interference_stage
from osrm.stages.evaluation import adapter_series, eval_stage
from osrm.stages.preparation import check_rank, prepare
from osrm.stages.reporting import report_stage, result_columns
from osrm.stages.retrofitting import retrofit_stage
from osrm.stages.statistics import stats_stage, subspace_stage
from osrm.stages.training import adapter_stage
from osrm.tasks.registry import task_spec
from osrm.tasks.spec import generative

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
DEMO_QUICK_CONFIG = Path(__file__).with_name("demo-quick.yaml")
STAGES = ("stats", "train", "eval", "report")


def run(
    config: str | Path, overrides: list[str] | tuple[str, ...] = (), *, until: str = "report"
) -> dict:
    """Run the stages up to ``until`` (``stats``, ``train``, ``eval`` or ``report``)."""
    if until not in STAGES:
        raise OsrmError(f"until {until!r}: expected one of {list(STAGES)}")
    cfg = prepare(config, overrides)
    try:
        return _stages(cfg, until)
    finally:
        unlock_run_dir(Path(cfg.run_dir))


def _stages(cfg: ExperimentConfig, until: str) -> dict:
    run_dir = Path(cfg.run_dir)
    specs = {task: task_spec(cfg, task) for task in cfg.task_names}  # resolved once, here
    model, tokenizer = load_base(cfg, generate=generative(specs.values()))
    check_rank(cfg, model)
    stats, metas = stats_stage(cfg, run_dir, specs, model, tokenizer)
    del model  # the training and evaluation stages load their own
    bases, summary = subspace_stage(cfg, stats, metas)  # reused by the training stage
    write_json(
        run_path(run_dir, SUBSPACE_REPORT_FILE), {"osrm_version": __version__, "modes": summary}
    )
    d_in = next(iter(next(iter(stats.values())).values())).d_in
    table = subspace_table(summary, (cfg.lora.rank, d_in))
    out: dict = {"cfg": cfg, "run_dir": run_dir, "subspace_table": table}
    if until == "stats":
        return out
    if distributed.is_main():  # one process removes; the others wait for it
        discard_unverified_adapters(cfg, run_dir)
    distributed.barrier()
    adapters = adapter_stage(cfg, run_dir, specs, stats, metas, bases)
    out["adapters"] = adapters
    if until == "train":
        return out
    retrofit_stage(cfg, run_dir, adapters)
    results = eval_stage(cfg, run_dir, specs, adapters)
    finals = {(i, t): d for i, k, dirs in adapter_series(cfg, run_dir, adapters) if k is None
              for t, d in zip(cfg.task_names, dirs, strict=True)}  # fmt: skip
    matrices = interference_stage(cfg, finals, stats)
    write_json(run_path(run_dir, INTERFERENCE_FILE), matrices)
    out.update(results=results, interference=matrices)
    budgets = None
    if cfg.train.checkpoints:  # cheap: recomputed from the saved adapters on every run
        budgets = out["budgets"] = budget_stage(cfg, run_dir, adapters, stats, matrices)
        path = run_path(run_dir, BUDGET_DIAGNOSTICS_FILE)
        write_json(path, {"osrm_version": __version__, **budgets})
    if until == "eval":
        return out
    if distributed.is_main():  # the report is files only: one process writes it
        out["report"] = report_stage(cfg, run_dir, results, matrices, budgets)
    distributed.barrier()
    return out


def print_summary(out: dict) -> None:
    """The results table and where the report is (what `osrm run` and `osrm demo` print)."""
    cfg: ExperimentConfig = out["cfg"]
    report = out.get("report")
    if report is None:
        return
    print(f"\n{markdown_table(report['rows'], result_columns(cfg, report['rows']))}\n")
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


def report(run_dir: str | Path, seeds: Sequence[str | Path] = ()) -> dict:
    """``osrm report RUN_DIR [--seeds RUN_DIR ...]``: rebuild the report from the run's config and
    results; the runs of ``seeds`` (the same config, other seeds) pool into the verdict."""
    run_dir = Path(run_dir)
    cfg, results = _scored_run(run_dir)
    seed_runs, seen = [], {cfg.seed}
    for other in map(Path, seeds):
        theirs, their_results = _same_config_other_seed(cfg, run_dir, other)
        if theirs.seed in seen:
            raise OsrmError(f"--seeds {other}: seed {theirs.seed} is there twice; give one run "
                            "per seed")  # fmt: skip
        seen.add(theirs.seed)
        seed_runs.append(their_results)
    inter = run_dir / INTERFERENCE_FILE
    matrices = read_interference(inter) if inter.is_file() else {}
    budget_file = run_dir / BUDGET_DIAGNOSTICS_FILE
    budgets = read_budget_diagnostics(budget_file) if budget_file.is_file() else None
    with run_dir_locked(run_dir):
        return report_stage(cfg, run_dir, results, matrices, budgets, seed_runs)["paths"]


def _scored_run(run_dir: Path) -> tuple[ExperimentConfig, list]:
    """A run directory's config and results (at least one)."""
    config = run_dir / CONFIG_FILE
    if not config.is_file():
        raise OsrmError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    cfg = load_config(config)
    results = read_results(run_dir / RESULTS_FILE)
    if not results:
        raise OsrmError(
            f"{run_dir}/{RESULTS_FILE}: no results yet; run `osrm run` or `osrm eval` first"
        )
    return cfg, results


def _same_config_other_seed(
    cfg: ExperimentConfig, run_dir: Path, other: Path
) -> tuple[ExperimentConfig, list]:
    """Config and results of ``other``, a run of ``cfg`` but for the seed (else one line)."""
    theirs, results = _scored_run(other)
    mine = cfg.model_dump(exclude={"seed", "run_dir"})
    diff = [k for k, v in theirs.model_dump(exclude={"seed", "run_dir"}).items() if mine[k] != v]
    if diff:
        raise OsrmError(f"--seeds {other}: its config differs from {run_dir}'s in {diff} (only "
                        "the seed may differ)")  # fmt: skip
    return theirs, results
