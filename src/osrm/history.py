"""A run's history of added tasks (``osrm add-task``): ``history/<n>-<task>/`` holds the
results before the addition (``results.before.jsonl``) and the before/after table
(``before_after.json``), which ``osrm report`` shows as "Added later" sections."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from osrm.artifacts import atomic_file
from osrm.config import ExperimentConfig
from osrm.loaders import read_json
from osrm.report import Result, markdown_table
from osrm.rundir import BEFORE_FILE, CHANGE_FILE, RESULTS_FILE, history_dir, run_path


def history_of(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """``history/<n>-<task>`` of the last added task of ``cfg`` (or of the next one)."""
    n = len(cfg.added_tasks)
    return history_dir(run_dir, n, cfg.added_tasks[-1].task) if n else run_dir / "history"


def start_history(history: Path, run_dir: Path) -> None:
    """``history/<n>-<task>/results.before.jsonl``: the run's results before the addition."""
    before = run_path(history, BEFORE_FILE)
    results = run_dir / RESULTS_FILE
    if before.is_file():  # an interrupted addition: copied before the results were changed
        return
    history.mkdir(parents=True, exist_ok=True)
    with atomic_file(before) as tmp:
        if results.is_file():
            shutil.copyfile(results, tmp)
        else:
            tmp.write_text("")


def before_after(
    before: list[Result], after: list[Result], old_tasks: list[str], new: str
) -> list[dict]:
    """Per init and model (individual, each merged setting; final adapters): each task's score
    before and after the addition (None where there is none)."""

    def table(results: list[Result]) -> dict:
        return {(r.init, r.kind, r.method, r.hp, r.task): r.score for r in results
                if r.step is None and r.kind != "base"}  # fmt: skip

    old, now = table(before), table(after)
    models = dict.fromkeys(k[:4] for k in [*now, *old])
    rows = []
    for init, kind, method, hp in models:
        row = {"init": init, "model": kind if kind != "merged" else f"{method} {hp}".strip()}
        for t in [*old_tasks, new]:
            row[f"{t} before"] = old.get((init, kind, method, hp, t))
            row[f"{t} after"] = now.get((init, kind, method, hp, t))
        rows.append(row)
    return rows


def change_table(out: dict) -> str:
    """The before/after table of :func:`add_task` as markdown."""
    rows, columns = change_rows(out)
    return markdown_table(rows, columns) if rows else "(no scores)"


def change_rows(change: Mapping) -> tuple[list[dict], dict[str, str]]:
    """Rows and columns of an ``osrm add-task`` before/after table (``before_after.json``): one
    row per init and model, each task's score ``before → after``."""
    raw = change["rows"]
    tasks = list(dict.fromkeys(c.rsplit(" ", 1)[0] for r in raw for c in r if " " in c
                               and c.endswith((" before", " after"))))  # fmt: skip

    def cell(row: Mapping, task: str) -> str:
        b, a = row.get(f"{task} before"), row.get(f"{task} after")
        after = "not scored" if a is None else f"{a:.3f}"
        return ("—" if a is None else after) if b is None else f"{b:.3f} → {after}"

    rows = [{"init": r["init"], "model": r["model"], **{t: cell(r, t) for t in tasks}}
            for r in raw]  # fmt: skip
    return rows, {"init": "init", "model": "model", **{t: t for t in tasks}}


def history_sections(cfg: ExperimentConfig, run_dir: Path) -> list[tuple[str, list, dict]]:
    """(title, rows, columns) of every task added by ``osrm add-task`` that finished."""
    out = []
    for n, added in enumerate(cfg.added_tasks, 1):
        path = history_dir(run_dir, n, added.task) / CHANGE_FILE
        if not path.is_file():
            continue
        mu = added.retrofit_mu
        how = "" if mu is None else f"; the earlier adapters retrofitted against it at μ = {mu:g}"
        rows, columns = change_rows(read_json(path, "before/after table"))
        out.append((f"Added later ({n}): {added.task}{how}. Scores before → after", rows, columns))
    return out
