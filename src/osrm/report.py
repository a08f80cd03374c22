"""Results: one JSON line per evaluation, pivoted into tables (Markdown, CSV).

Rows of the table are (init, model, method, hyperparameters); columns are the tasks' main
metrics, their average, and the average normalised by the individual adapters of the same init
(merged score / individual score per task, then averaged): 1.0 means merging lost nothing. It is
left blank when an individual score is not positive, where a ratio has no meaning.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from osrm.errors import OsrmError
from osrm.loaders import read_json, read_jsonl

KINDS = ("base", "individual", "merged")  # table order


@dataclass(frozen=True)
class Result:
    """One evaluation: a model (``kind``) of one init on one task.

    ``kind`` is ``base`` (the frozen backbone with the task's trained head), ``individual`` (the
    task's own adapter) or ``merged`` (``method`` with hyperparameters ``hp``). ``step``: the
    adapters are the budgets saved at that training step (``train.checkpoints``); None: the
    final adapters (the line then has no ``step``, as before budgets existed).
    """

    init: str
    kind: str
    task: str
    metric: str
    score: float
    method: str = ""
    hp: str = ""
    scores: dict = field(default_factory=dict)
    step: int | None = None

    @property
    def key(self) -> tuple[str, str, str, str, int | None]:
        return (self.init, self.kind, self.method, self.hp, self.step)


def hp_string(hp: Mapping[str, object]) -> str:
    """Canonical, sorted ``k=v`` form of hyperparameters (``scale=0.5,density=0.2``)."""
    return ",".join(f"{k}={v}" for k, v in sorted(hp.items()))


def parse_hp(hp: str) -> dict[str, str]:
    """The ``k -> v`` pairs of an :func:`hp_string` (values as written)."""
    return dict(item.partition("=")[::2] for item in hp.split(",") if item)


_RESULT = TypeAdapter(Result)


def read_results(path: str | Path) -> list[Result]:
    """All results of a ``results.jsonl`` (missing file: none).

    A last line without its newline is what an interrupted append leaves behind: it is ignored
    (its result is computed again) and removed by the next :func:`append_results`.

    Raises:
        OsrmError: a complete line that is not a result, naming the file and line.
    """
    results = []
    for number, data in read_jsonl(path, "result"):
        try:
            result = _RESULT.validate_python(data)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "line"
            raise OsrmError(
                f"{path}:{number}: not a result line ({field}: {err['msg']}); delete that line "
                "and re-run to compute it again"
            ) from None
        if result.kind not in KINDS:
            raise OsrmError(
                f"{path}:{number}: not a result line (kind {result.kind!r}, expected one of "
                f"{list(KINDS)}); delete that line and re-run to compute it again"
            )
        results.append(result)
    return results


_MATRICES = TypeAdapter(dict[str, dict[str, dict[str, float]]])


def _validated(adapter: TypeAdapter, data: object, what: str, redo: str) -> Any:
    """``adapter.validate_python(data)``, or one line: what, where, why, and how to redo it."""
    try:
        return adapter.validate_python(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise OsrmError(f"{what} (at {where}: {err['msg']}); {redo}") from None


def read_interference(path: str | Path) -> dict[str, dict[str, dict[str, float]]]:
    """``interference.json``: init -> adapter -> task -> ratio, checked."""
    data = read_json(path, "interference matrices")
    redo = "delete it and re-run `osrm eval` to compute it again"
    matrices = _validated(_MATRICES, data, f"{path}: not interference matrices", redo)
    for init, m in matrices.items():  # adapter j -> task t, over the same tasks
        if not m or any(set(row) != set(m) for row in m.values()):
            raise OsrmError(f"{path}: init {init!r} is not a square matrix over its tasks; {redo}")
    return matrices


_BUDGET_ROW = TypeAdapter(list[dict[str, str | int | float | None]])


def read_budget_diagnostics(path: str | Path) -> dict[str, list[dict]]:
    """``budget_diagnostics.json``: ``{"rows": [...], "per_task": [...]}``, checked."""
    data = read_json(path, "budget diagnostics")
    redo = "delete it and re-run `osrm run` to compute it again"
    what = f"{path}: not budget diagnostics"
    out = {k: _validated(_BUDGET_ROW, data.get(k), what, redo) for k in ("rows", "per_task")}
    if any(not {"init", "step"} <= set(r) for r in out["rows"]):
        raise OsrmError(f"{path}: a row without 'init' and 'step'; {redo}")
    return out


def _drop_partial_line(path: Path) -> None:
    """Cut an unterminated last line (an interrupted append) so new lines start cleanly."""
    data = path.read_bytes() if path.is_file() else b""
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def append_results(path: str | Path, results: Iterable[Result]) -> None:
    """Append results as JSON lines, one write each, flushed (a kill loses at most one line).

    Idempotent: a result whose (key, task) is already in the file is not appended again.
    """
    path = Path(path)
    _drop_partial_line(path)
    done = {(r.key, r.task) for r in read_results(path)}
    with open(path, "a") as f:
        for r in results:
            if (r.key, r.task) in done:
                continue
            done.add((r.key, r.task))
            line = {k: v for k, v in asdict(r).items() if k != "step" or v is not None}
            f.write(json.dumps(line) + "\n")
            f.flush()
        os.fsync(f.fileno())


def results_table(results: Sequence[Result], tasks: Sequence[str]) -> list[dict[str, object]]:
    """Pivot: one row per (init, kind, method, hp, step) with per-task scores, avg and norm_avg
    (against the individual adapters of the same init and step); budget rows have ``step``."""
    individual = {(r.init, r.step, r.task): r.score for r in results if r.kind == "individual"}
    rows: dict[tuple, dict[str, object]] = {}
    for r in results:
        step = {} if r.step is None else {"step": r.step}
        row = rows.setdefault(
            r.key, {"init": r.init, **step, "model": r.kind, "method": r.method, "hp": r.hp}
        )
        row[r.task] = r.score
    out = []
    for key, row in rows.items():
        scores = [row[t] for t in tasks if t in row]
        if len(scores) == len(tasks):
            row["avg"] = sum(scores) / len(scores)
            # a ratio means something only against a positive individual score (a negative
            # correlation or MCC would flip its sign): otherwise the row has no norm_avg
            own = {t: individual.get((key[0], key[4], t), 0) for t in tasks}
            ratios = [row[t] / own[t] for t in tasks if own[t] > 0]
            row["norm_avg"] = sum(ratios) / len(ratios) if len(ratios) == len(tasks) else None
        out.append(row)
    order = {k: i for i, k in enumerate(KINDS)}
    inits = list(dict.fromkeys(r.init for r in results))
    last = float("inf")  # the final adapters after every budget
    out.sort(key=lambda r: (inits.index(r["init"]), r.get("step", last), order[r["model"]],
                            r["method"], _hp_key(r["hp"])))  # fmt: skip
    return out


def _hp_key(hp: str) -> tuple:
    """Sort ``scale=0.3`` before ``scale=1.0`` numerically."""
    parts = []
    for k, v in parse_hp(hp).items():
        try:
            parts.append((k, float(v), ""))
        except ValueError:
            parts.append((k, 0.0, v))
    return tuple(parts)


def table_columns(tasks: Sequence[str], steps: bool = False) -> dict[str, str]:
    """Table columns (key -> header); ``steps``: with the budget's step (blank: final)."""
    step = {"step": "step"} if steps else {}
    return {"init": "init", **step, "model": "model", "method": "method",
            "hp": "hyperparameters", **{t: t for t in tasks}, "avg": "avg",
            "norm_avg": "norm. avg"}  # fmt: skip


def _cell(value: object, floatfmt: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, floatfmt)
    return str(value)


def markdown_table(
    rows: Sequence[Mapping[str, object]], columns: Mapping[str, str], floatfmt: str = ".3f"
) -> str:
    """A Markdown table of ``rows`` with ``columns`` (key -> header); missing cells are blank."""
    header = "| " + " | ".join(columns.values()) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(r.get(k), floatfmt) for k in columns) + " |" for r in rows]
    return "\n".join([header, rule, *body])


def csv_table(rows: Sequence[Mapping[str, object]], columns: Mapping[str, str]) -> str:
    """The same table as CSV (full precision)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def interference_rows(
    matrices: Mapping[str, Mapping[str, Mapping[str, float]]],
) -> list[dict[str, object]]:
    """One row per (init, adapter j): ratios on every task's inputs."""
    return [
        {"init": init, "adapter": j, **row} for init, m in matrices.items() for j, row in m.items()
    ]


def subspace_table(summary: dict[str, list[dict]], dims: tuple[int, int]) -> str:
    """Markdown: per mode, mean over tasks of the captured energies (%) and the overlap."""
    rows = []
    for mode, per_task in summary.items():
        mean = {k: sum(r[k] for r in per_task) / len(per_task) for k in per_task[0] if k != "task"}
        rows.append(
            {"mode": mode, **{k: 100 * v if k != "overlap" else v for k, v in mean.items()}}
        )
    # for random subspaces E‖A_i A_jᵀ‖²_F / r = r / d
    rank, d_in = dims
    rows.append({"mode": "random A", "other": rows[0]["other_random"],
                 "own": rows[0]["own_random"], "overlap": rank / d_in})  # fmt: skip
    columns = {
        "mode": "A init",
        "other": "other tasks' energy %",
        "own": "own task's energy %",
        "overlap": "overlap between tasks",
    }
    return markdown_table(rows, columns)
