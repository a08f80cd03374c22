"""The run directory: its layout, what may be in it, where osrm writes inside it, its lock, and
whether what is in it may be reused.

Every path osrm writes inside a run directory is built by :func:`run_path`, which refuses a
symbolic link anywhere below the run directory (``adapters -> /elsewhere`` would send the
writes elsewhere). :func:`check_run_dir` refuses such links up front, before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from osrm import distributed, locking
from osrm.adapters import RUN_ADAPTER_FILES
from osrm.artifacts import atomic_file, verify_dir
from osrm.config import ExperimentConfig, dump_config, parse_config
from osrm.errors import OsrmError
from osrm.loaders import read_yaml
from osrm.report import hp_string
from osrm.safety import check_name, ensure_inside

log = logging.getLogger(__name__)
LOCK_FILE = ".osrm.lock"


def _link_error(link: Path, run_dir: Path) -> OsrmError:
    return OsrmError(
        f"{link} is a symbolic link; osrm writes only inside the run directory {run_dir} and "
        "does not follow links there (remove the link, or set run_dir to the real folder)"
    )


def run_path(run_dir: str | os.PathLike, *parts: str) -> Path:
    """``run_dir/parts...``, refusing symlinks below ``run_dir`` and paths that leave it."""
    root = Path(run_dir)
    node = root
    for part in Path(*parts).parts if parts else ():
        node = node / part
        if node.is_symlink():
            raise _link_error(node, root)
    return ensure_inside(root, node, str(Path(*parts)) if parts else "run_dir")


def check_run_dir(run_dir: Path) -> None:
    """A run directory is new, empty, or one of ours (it has ``config.yaml``), with no symlinks.

    Hidden entries do not count: they are temporary files of an atomic write (``config.yaml``
    being written by another process of the same launch, or left by a killed run) and the lock.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise OsrmError(f"run_dir {run_dir}: exists and is not a directory")
    visible = run_dir.is_dir() and any(not p.name.startswith(".") for p in run_dir.iterdir())
    if visible and not (run_dir / CONFIG_FILE).is_file():
        raise OsrmError(
            f"run_dir {run_dir}: exists, is not empty and holds no osrm run (no config.yaml); "
            "choose a new or empty directory"
        )
    for top, dirs, files in os.walk(run_dir):  # does not descend into linked folders
        for name in sorted(dirs + files):
            if os.path.islink(os.path.join(top, name)):
                raise _link_error(Path(top) / name, run_dir)


def unlock_run_dir(run_dir: Path) -> None:
    locking.release(run_dir / LOCK_FILE)


@contextlib.contextmanager
def run_dir_locked(run_dir: Path) -> Iterator[None]:
    """Hold an existing run directory's lock for the block (re-entrant)."""
    check_run_dir(run_dir)
    with locking.held(run_path(run_dir, LOCK_FILE), f"run_dir {run_dir}"):
        yield


# The layout of a run directory: every name osrm reads or writes inside one, defined here only.
CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.jsonl"
INTERFERENCE_FILE = "interference.json"
BUDGET_DIAGNOSTICS_FILE = "budget_diagnostics.json"  # only with train.checkpoints
SUBSPACE_REPORT_FILE = "subspace_report.json"
REPORT_FILES = {"markdown": "results.md", "csv": "results.csv", "html": "report.html"}
PLOT_FILES = {
    "scale": "plot_scale.png", "best": "plot_best.png", "interference": "plot_interference.png",
    # only with train.checkpoints: scores, interference and drift of A against the step
    "budget_scores": "plot_budget_scores.png", "budget_interference":
    "plot_budget_interference.png", "budget_drift": "plot_budget_drift.png",
}  # fmt: skip
STATS_DIR, ADAPTERS_DIR, MERGED_DIR = "stats", "adapters", "merged"
BUDGETS_DIR = "budgets"  # budgets/<step>/<init>/<task>: the adapter saved at train.checkpoints
# Sections that change artifacts: a run directory made with other values is not reused.
PINNED = ("seed", "model", "tasks", "lora", "stats", "subspace", "train", "eval", "added_tasks")


def stats_file(run_dir: Path, task: str) -> Path:
    """``stats/<task>.safetensors``: one task's activation statistics."""
    return run_path(run_dir, STATS_DIR, f"{task}.safetensors")


def adapter_dir(run_dir: Path, init: str, task: str) -> Path:
    """``adapters/<init>/<task>``: one trained adapter."""
    return run_path(run_dir, ADAPTERS_DIR, init, task)


def budget_dir(run_dir: Path, step: int, init: str, task: str) -> Path:
    """``budgets/<step>/<init>/<task>``: the adapter of ``adapters/<init>/<task>`` at ``step``, a
    plain adapter like it (so ``budgets/<step>/<init>/*`` merge like ``adapters/<init>/*``)."""
    return run_path(run_dir, BUDGETS_DIR, str(step), init, task)


HISTORY_DIR = "history"  # history/<n>-<task>: the n-th task added by `osrm add-task`


def history_dir(run_dir: Path, n: int, task: str) -> Path:
    """``history/<n>-<task>``: results before the n-th addition, its before/after table and the
    adapters it retrofitted, as they were."""
    return run_path(run_dir, HISTORY_DIR, f"{n}-{task}")


# inside history/<n>-<task>: the results before the addition, its before/after table
BEFORE_FILE, CHANGE_FILE = "results.before.jsonl", "before_after.json"
RETROFIT_DIR = "retrofit"  # retrofit/<step or final>/<init>+rf<μ>/<task>: merge.retrofit


def retrofit_label(init: str, mu: float) -> str:
    """The init name of ``init``'s adapters retrofitted at ``mu`` (``lora+rf0.5``)."""
    return f"{init}+rf{mu:g}"


def retrofit_dir(run_dir: Path, step: int | None, label: str) -> Path:
    """``retrofit/<step>/<label>`` (``final`` for the final adapters): one adapter per task."""
    return run_path(run_dir, RETROFIT_DIR, "final" if step is None else str(step), label)


def merged_dir(run_dir: Path, init: str, method: str, hp: dict[str, Any]) -> Path:
    """``merged/<init>/<method>/<hyperparameters>``: one folder name each, inside ``run_dir``."""
    name = check_name(hp_string(hp) or "default", f"merge.methods.{method} (as a folder name)")
    return ensure_inside(run_dir, run_path(run_dir, MERGED_DIR, init, method, name), "merge.save")


def write_text(path: Path, text: str) -> Path:
    """Text artifact, written atomically (by the main process only)."""
    if distributed.is_main():
        with atomic_file(path) as tmp:
            tmp.write_text(text)
    return path


def write_json(path: Path, data: object) -> None:
    """JSON artifact, written atomically (by the main process only)."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def recorded_config(path: Path) -> dict:
    """A run directory's ``config.yaml`` with today's defaults filled in, so that a setting added
    by a later osrm version does not make an older run look different; as written if it no longer
    parses."""
    old = read_yaml(path, "the run's recorded config")
    try:
        return parse_config(old, str(path)).model_dump(mode="json")
    except OsrmError:
        return old


def check_recorded(cfg: ExperimentConfig, run_dir: Path) -> None:
    """A run directory's ``config.yaml``, if any, was made with the same pinned sections."""
    recorded = run_dir / CONFIG_FILE
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


def record_config(cfg: ExperimentConfig, run_dir: Path) -> None:
    """Create and lock ``run_dir`` (held until :func:`unlock_run_dir` or the process ends) and
    write its ``config.yaml``.

    Under a launcher only the main process locks: the others work in the same run with it.
    """
    if distributed.is_main():  # held for the whole command
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OsrmError(f"run_dir {run_dir}: cannot create it ({e.strerror})") from None
        locking.acquire(run_path(run_dir, LOCK_FILE), f"run_dir {run_dir}")
    try:
        if distributed.is_main():
            check_recorded(cfg, run_dir)  # written by another process since the first check?
        write_text(run_path(run_dir, CONFIG_FILE), dump_config(cfg))  # by the main process
    except BaseException:
        unlock_run_dir(run_dir)
        raise


def clear_run_dir(run_dir: Path) -> None:
    """Delete an osrm run directory so that the next run starts from nothing (the benchmarks time
    the whole work, not a re-run that finds it done). Refuses a directory that is not ours."""
    check_run_dir(run_dir)
    if run_dir.is_dir():
        shutil.rmtree(run_dir)


def discard_unverified_adapters(cfg: ExperimentConfig, run_dir: Path) -> None:
    """Remove adapter folders whose manifest does not verify, so the training stage redoes them.

    The stage itself trusts a folder whose ``training.json`` matches; this makes sure a folder
    with a missing, altered or truncated file never gets that far.
    """
    for init in cfg.lora.inits:
        for task in cfg.task_names:
            paths = {f"{init}/{task}": adapter_dir(run_dir, init, task)}
            for k in cfg.train.checkpoints:
                paths[f"{init}/{task} at step {k}"] = budget_dir(run_dir, k, init, task)
            for name, path in paths.items():
                problem = verify_dir(path, RUN_ADAPTER_FILES) if path.exists() else None
                if problem:
                    log.warning("adapter %s: %s; training it again", name, problem)
                    shutil.rmtree(path)
