"""``osrm add-task``: grow a trained run by one task, from the old tasks' statistics only.

The new task's statistics are collected, its adapter is trained for every init of the run (an
OSRM-family A starts orthogonal to every existing task's inputs, from their saved statistics), the
existing adapters are optionally retrofitted against the new task's inputs (``retrofit_mu``;
their originals are kept under ``history/``), and everything is merged and scored again. The old
tasks' training data is never read; their evaluation split is read only to score them after the
addition, and a task whose data is gone is reported as not scored.

The run's ``config.yaml`` then lists the task (last in ``tasks``) and records it in
``added_tasks``, so the adapters trained before it keep their fingerprints
(:meth:`~osrm.config.ExperimentConfig.known_tasks`) and ``osrm run`` / ``osrm report`` on the
grown run reuse them. ``history/<n>-<task>/`` holds the results before the addition
(``results.before.jsonl``) and the before/after table (``before_after.json``).
Every step skips what is done, so an interrupted addition is finished by running it again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osrm import __version__
from osrm.adapters import RUN_ADAPTER_FILES
from osrm.artifacts import atomic_file, verify_dir, verify_file
from osrm.config import ExperimentConfig, dump_config, load_config, parse_config
from osrm.errors import OsrmError
from osrm.history import before_after, history_of, start_history
from osrm.models import load_base
from osrm.report import Result, append_results, read_results
from osrm.retrofit import check_mu
from osrm.rundir import (
    BEFORE_FILE,
    BUDGET_DIAGNOSTICS_FILE,
    CHANGE_FILE,
    CONFIG_FILE,
    INTERFERENCE_FILE,
    RESULTS_FILE,
    adapter_dir,
    run_dir_locked,
    run_path,
    stats_file,
    write_json,
    write_text,
)
from osrm.stages.diagnostics import budget_stage, interference_stage
from osrm.stages.evaluation import eval_stage, merge_grid
from osrm.stages.preparation import check_splits
from osrm.stages.reporting import report_stage
from osrm.stages.retrofitting import retrofit_against, retrofit_stage
from osrm.stages.statistics import stats_stage
from osrm.stages.training import adapter_stage
from osrm.stats import StatsMeta, find_target_modules, load_stats, weight_fingerprint
from osrm.tasks.registry import TASKS, load_task, task_spec
from osrm.tasks.spec import TaskSpec, generative

log = logging.getLogger(__name__)
KEPT = "adapters"  # history/<n>-<task>/adapters: the originals of retrofitted old adapters


@dataclass(frozen=True)
class Addition:
    """A checked addition: the grown config, the new task, where its history goes."""

    cfg: ExperimentConfig  # the run's config with the task appended and recorded
    old: ExperimentConfig  # the run's config before it
    task: str
    history: Path  # history/<n>-<task>
    specs: dict[str, TaskSpec]  # every task, the new one last
    resumed: bool  # config.yaml lists the task already (an interrupted addition)


def add_task(
    run_dir: str | Path,
    task: str,
    fields: Mapping[str, Any] | None = None,
    retrofit_mu: float | None = None,
) -> dict:
    """Add ``task`` (a built-in name, or a block's ``fields`` with that name) to a trained run.

    Returns ``{"before_after": rows, "scored": tasks, "not_scored": tasks, "history": path}``.

    Raises:
        OsrmError: not a trained run, a task already in it, missing or foreign statistics,
            a bad task block or μ; checked before anything is written.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():  # before the lock, which writes a file
        raise OsrmError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    with run_dir_locked(run_dir):
        plan = plan_addition(run_dir, task, dict(fields or {}), retrofit_mu)
        cfg, specs = plan.cfg, plan.specs
        model, tokenizer = load_base(cfg, generate=generative(specs.values()))
        stats, metas = old_statistics(plan.old, run_dir, model)  # checked against this model
        new, new_meta = stats_stage(cfg, run_dir, {task: specs[task]}, model, tokenizer)
        del model
        stats.update(new)
        metas.update(new_meta)
        adapters = adapter_stage(cfg, run_dir, {task: specs[task]}, stats, metas)
        adapters.update({(i, t): adapter_dir(run_dir, i, t) for i in cfg.lora.inits
                         for t in plan.old.task_names})  # fmt: skip
        start_history(plan.history, run_dir)
        if retrofit_mu is not None:
            kept = run_path(plan.history, KEPT)
            retrofit_against(run_dir, cfg.lora.inits, plan.old.task_names, task, kept, retrofit_mu)
        if not plan.resumed:  # the grown run from here on
            keep_valid_results(plan, run_dir)
            write_text(run_path(run_dir, CONFIG_FILE), dump_config(cfg))
        return score_and_report(plan, run_dir, adapters, stats)


def plan_addition(
    run_dir: Path, task: str, fields: dict[str, Any], retrofit_mu: float | None
) -> Addition:
    """Every check that needs no model weights; nothing is written."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise OsrmError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    recorded = load_config(run_dir / CONFIG_FILE).model_copy(update={"run_dir": str(run_dir)})
    old = recorded
    added = [a.task for a in recorded.added_tasks]
    if task in recorded.task_names:
        unfinished = added[-1:] == [task] and not (history_of(recorded, run_dir) / CHANGE_FILE
                                                    ).is_file()  # fmt: skip
        if not unfinished:
            raise OsrmError(f"add-task {task!r}: already a task of {run_dir} "
                            f"(tasks: {recorded.task_names})")  # fmt: skip
        old = _without_last(recorded)  # an interrupted addition: finish it
    if retrofit_mu is not None:
        retrofit_mu = check_mu(retrofit_mu)
    cfg = recorded if old is not recorded else _grown(old, task, fields, retrofit_mu)
    if isinstance(cfg.merge.weights, list):
        raise OsrmError(f"{run_dir}/{CONFIG_FILE}: merge.weights lists one weight per task; "
                        "set it to null or auto before adding a task")  # fmt: skip
    specs = {t: task_spec(cfg, t) for t in cfg.task_names}  # no data read
    generative(specs.values())  # one format for every task
    check_splits(cfg, specs[task])
    merge_grid(cfg)
    for name in old.task_names:
        path = stats_file(run_dir, name)
        if not path.is_file():
            raise OsrmError(
                f"{path}: missing; add-task needs every task's statistics (this run has none "
                "for that task: run `osrm stats` on its config first)"
            )
        problem = verify_file(path)
        if problem:
            raise OsrmError(problem)
        for init in old.lora.inits:
            adapter = adapter_dir(run_dir, init, name)
            problem = verify_dir(adapter, RUN_ADAPTER_FILES) if adapter.is_dir() else "missing"
            if problem:
                raise OsrmError(f"{adapter}: {problem}; add-task grows a trained run (run "
                                "`osrm run` on its config first)")  # fmt: skip
    history = history_of(cfg, run_dir)
    check_unfinished(run_dir, recorded if old is not recorded else None, history, retrofit_mu)
    return Addition(cfg, old, task, history, specs, old is not recorded)


def check_unfinished(
    run_dir: Path, recorded: ExperimentConfig | None, history: Path, mu: float | None
) -> None:
    """An interrupted addition is finished only with the ``--retrofit-mu`` it started with
    (``recorded``: the config that lists it already; else its kept originals show a retrofit)."""
    if recorded is None:
        if mu is None and (history / KEPT).is_dir():
            raise OsrmError(f"{history / KEPT}: an interrupted addition retrofitted the "
                            "old adapters; run it again with its --retrofit-mu")  # fmt: skip
        return
    started = recorded.added_tasks[-1].retrofit_mu
    if mu != started:
        shown = ["none" if m is None else f"{m:g}" for m in (started, mu)]
        raise OsrmError(f"{run_dir / CONFIG_FILE}: the interrupted addition of "
                        f"{recorded.added_tasks[-1].task!r} was started with --retrofit-mu "
                        f"{shown[0]}; run it again with the same (given: {shown[1]})")  # fmt: skip


def _grown(
    old: ExperimentConfig, task: str, fields: dict[str, Any], mu: float | None
) -> ExperimentConfig:
    """``old`` with ``task`` appended to ``tasks`` and recorded in ``added_tasks``."""
    if not fields and task not in TASKS:
        raise OsrmError(f"add-task {task!r}: not a built-in task ({', '.join(TASKS)}); a task of "
                        "your own needs its block's fields: 'files={train: a.csv}' "
                        "text_fields=... label_field=... 'label_names=[...]'")  # fmt: skip
    entry: str | dict = task
    if fields:
        entry = {"name": task, **fields}
        if isinstance(fields.get("files"), Mapping):  # recorded absolute: the run may move cwd
            entry["files"] = {k: str(Path(v).expanduser().resolve()) for k, v in
                              fields["files"].items()}  # fmt: skip
    data = old.model_dump(mode="json")
    data["tasks"] = [*data["tasks"], entry]
    data["added_tasks"] = [*data.get("added_tasks", []), {"task": task, "retrofit_mu": mu}]
    try:
        return parse_config(data, f"add-task {task}")
    except OsrmError as e:
        raise OsrmError(f"add-task {task!r}: {e}") from None


def _without_last(cfg: ExperimentConfig) -> ExperimentConfig:
    data = cfg.model_dump(mode="json")
    data["tasks"], data["added_tasks"] = data["tasks"][:-1], data["added_tasks"][:-1]
    return parse_config(data, "the run's config before its last added task")


def old_statistics(
    old: ExperimentConfig, run_dir: Path, model
) -> tuple[dict, dict[str, StatsMeta]]:
    """The saved statistics of the run's tasks, each made on ``model``'s weights (else one line)."""
    names = find_target_modules(model, old.lora.target_modules)
    fingerprint = weight_fingerprint(model, names)
    stats, metas = {}, {}
    for task in old.task_names:
        path = stats_file(run_dir, task)
        stats[task], metas[task] = load_stats(path)
        if metas[task].fingerprint != fingerprint or set(stats[task]) != set(names):
            raise OsrmError(
                f"{path}: statistics of another base model ({metas[task].base_model}, weights "
                f"{metas[task].fingerprint[:12]}), not of the run's {old.model.name} "
                f"({fingerprint[:12]}); collect them again with `osrm stats`"
            )
    return stats, metas


def keep_valid_results(plan: Addition, run_dir: Path) -> None:
    """Drop the results the addition makes stale: every merge (one more adapter), the
    individual scores of retrofitted adapters (the final ones; budgets are not retrofitted) and
    of ``merge.retrofit`` series (one more task to avoid). Base scores stay."""
    path = run_path(run_dir, RESULTS_FILE)
    if not path.is_file():
        return
    retrofitted = plan.cfg.added_tasks[-1].retrofit_mu is not None

    def valid(r: Result) -> bool:
        if r.kind == "base":
            return True
        plain = r.init in plan.cfg.lora.inits
        return r.kind == "individual" and plain and not (retrofitted and r.step is None)

    with atomic_file(path) as tmp:
        append_results(tmp, [r for r in read_results(path) if valid(r)])


def scorable(plan: Addition) -> list[str]:
    """The tasks whose evaluation split can be read (the new one always)."""
    cfg, out = plan.cfg, []
    for task, spec in plan.specs.items():
        try:
            load_task(spec, cfg.eval.split, seed=cfg.seed, max_examples=1)
            out.append(task)
        except (OsrmError, OSError) as e:
            if task == plan.task:
                raise
            log.warning("task %s is not scored after the addition: %s", task, e)
    return out


def score_and_report(plan: Addition, run_dir: Path, adapters: dict, stats: dict) -> dict:
    """Merge and score the grown run, its diagnostics and report, and the before/after table."""
    cfg = plan.cfg
    retrofit_stage(cfg, run_dir, adapters)
    scored = scorable(plan)
    results = eval_stage(cfg, run_dir, plan.specs, adapters, scored=scored)
    finals = {(i, t): adapters[i, t] for i in cfg.lora.inits for t in cfg.task_names}
    matrices = interference_stage(cfg, finals, stats)
    write_json(run_path(run_dir, INTERFERENCE_FILE), matrices)
    budgets = None
    if cfg.train.checkpoints:
        budgets = budget_stage(cfg, run_dir, adapters, stats, matrices)
        write_json(run_path(run_dir, BUDGET_DIAGNOSTICS_FILE), {"osrm_version": __version__,
                                                                **budgets})  # fmt: skip
    before = read_results(plan.history / BEFORE_FILE)
    rows = before_after(before, results, plan.old.task_names, plan.task)
    not_scored = [t for t in cfg.task_names if t not in scored]
    change = {"task": plan.task, "retrofit_mu": cfg.added_tasks[-1].retrofit_mu,
              "not_scored": not_scored, "rows": rows, "osrm_version": __version__}  # fmt: skip
    write_json(run_path(plan.history, CHANGE_FILE), change)  # marks the addition finished
    report = report_stage(cfg, run_dir, results, matrices, budgets)
    return {**change, "history": str(plan.history), "report": report["paths"]}
