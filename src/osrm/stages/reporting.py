"""Stage 4: ``results.md``, ``results.csv``, PNG plots and one self-contained ``report.html``."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path

from osrm import __version__
from osrm.config import ExperimentConfig, dump_config
from osrm.diagnostics import summarise_interference
from osrm.history import history_sections
from osrm.plots import (
    plot_best_bars,
    plot_budget_drift,
    plot_budget_interference,
    plot_budget_scores,
    plot_interference,
    plot_scale_curves,
)
from osrm.report import (
    Result,
    csv_table,
    interference_rows,
    markdown_table,
    results_table,
    table_columns,
)
from osrm.rundir import PLOT_FILES, REPORT_FILES, run_path, write_text
from osrm.verdict import html as verdict_html
from osrm.verdict import markdown as verdict_markdown
from osrm.verdict import verdict

Matrices = Mapping[str, Mapping[str, Mapping[str, float]]]
Budgets = Mapping[str, Sequence[Mapping]]  # budget_diagnostics.json: rows, per_task
BUDGET_COLUMNS = {
    "init": "init", "step": "step", "best_norm_avg": "best norm. avg", "best_avg": "best avg",
    "task_arithmetic": "best task_arithmetic norm. avg", "ties": "best ties norm. avg",
    "individual": "individual avg", "interference": "interference", "drift_deg": "drift (°)",
    "own_energy": "own energy (%)", "other_energy": "other energy (%)",
}  # fmt: skip
BUDGET_NOTE = (
    "Per init and training step (the final adapters at the step they trained; step 0: A as "
    "initialised, not scored): the best normalised and absolute averages over every merge "
    "setting, the best `task_arithmetic` and `ties` normalised averages, the individual "
    "adapters' average, the mean off-diagonal interference ratio, the mean principal angle "
    "between A and A at step 0, and the share (%) of the own task's and the other tasks' input "
    "energy captured by A's row space (averaged over tasks and modules)."
)


SCORES_NOTE = "Highlighted: the best merged score of each column."
# what each figure shows (the report captions it with this, never with its file name)
CAPTIONS = {
    "scale": "Task arithmetic: normalised merged average (merged / individual score, averaged "
    "over tasks) against the scale λ, one line per init; flatter is more robust to λ.",
    "best": "Each merge method at its best setting: per-task scores of the merged model, one "
    "panel per init.",
    "interference": "Interference ‖ΔW_j X_tᵀ‖ / ‖ΔW_t X_tᵀ‖ of adapter j (rows) on task t's "
    "inputs (columns), per init; lower off the diagonal means less interference.",
    "budget_scores": "Best merged normalised and absolute averages and the individual "
    "adapters' average against the training step, per init.",
    "budget_interference": "Mean off-diagonal interference ratio against the training step, "
    "per init.",
    "budget_drift": "Drift of A from its initialisation (mean principal angle) and the share of "
    "own-task and other-task input energy in A's row space, against the training step.",
}


def best_cells(rows: Sequence[Mapping], columns: Mapping[str, str]) -> set[tuple[int, str]]:
    """(row index, column) of the highest merged score in each numeric column (ties: all)."""
    out = set()
    merged = [(i, r) for i, r in enumerate(rows) if r["model"] == "merged"]
    for key in columns:
        values = [r[key] for _, r in merged if isinstance(r.get(key), float)]
        if values:
            out |= {(i, key) for i, r in merged if r.get(key) == max(values)}
    return out


def result_columns(cfg: ExperimentConfig, rows: Sequence[Mapping]) -> dict[str, str]:
    """The table's columns: with ``step`` when budgets were scored (blank: final adapters)."""
    return table_columns(cfg.task_names, steps=any("step" in r for r in rows))


def _best(rows: Sequence[Mapping], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return max(values) if values else None


def budget_table(rows: Sequence[Mapping], diagnostics: Sequence[Mapping]) -> list[dict]:
    """One row per (init, step) of ``diagnostics``, with the scores of that step's adapters from
    the results table ``rows``; the final adapters' rows (no ``step``) count at the last step
    of their init's diagnostics (the step they trained)."""
    final: dict[str, int] = {}
    for d in diagnostics:
        final[d["init"]] = max(final.get(d["init"], 0), d["step"])
    out = []
    for d in diagnostics:
        init, step = d["init"], d["step"]
        at = [r for r in rows if r["init"] == init and r.get("step", final[init]) == step]
        merged = [r for r in at if r["model"] == "merged"]
        individual = [r for r in at if r["model"] == "individual"]
        row = {
            "init": init,
            "step": step,
            "best_norm_avg": _best(merged, "norm_avg"),
            "best_avg": _best(merged, "avg"),
            "individual": _best(individual, "avg"),
        }
        for method in ("task_arithmetic", "ties"):
            row[method] = _best([r for r in merged if r["method"] == method], "norm_avg")
        row.update({k: d.get(k) for k in BUDGET_COLUMNS if k not in row})
        for k in ("own_energy", "other_energy"):  # a few % at most: shown in percent
            row[k] = None if row[k] is None else 100 * row[k]
        out.append(row)
    return out


def markdown_report(
    cfg: ExperimentConfig,
    rows: Sequence[Mapping],
    matrices: Matrices,
    budget_rows: Sequence[Mapping] = (),
    judged: Mapping | None = None,
    history: Sequence[tuple[str, list, dict]] = (),
) -> str:
    """results.md: the verdict (``judged``, from :func:`osrm.verdict.verdict`), then the tables."""
    tasks = cfg.task_names
    lines = [
        f"# osrm results: {cfg.run_dir}",
        "",
        f"Model `{cfg.model.name}`, LoRA r={cfg.lora.rank} alpha={cfg.lora.alpha} on "
        f"{cfg.lora.target_modules}, {cfg.train.steps} steps, seed {cfg.seed}; scores are each "
        f"task's main metric on its `{cfg.eval.split}` split; `norm. avg` = mean over tasks of "
        "merged / individual score of the same init. osrm " + __version__ + ".",
        "",
        *(verdict_markdown(judged) + [""] if judged else []),
        "## Scores",
        "",
        SCORES_NOTE.replace("Highlighted", "Bold"),
        "",
        markdown_table(_bold(rows, result_columns(cfg, rows)), result_columns(cfg, rows)),
    ]
    if matrices:
        cols = {"init": "init", "adapter": "adapter j", **{t: t for t in tasks}}
        summary = ", ".join(f"{i}: {v:.3f}" for i, v in summarise_interference(matrices).items())
        lines += [
            "",
            "## Interference ‖ΔW_j X_tᵀ‖ / ‖ΔW_t X_tᵀ‖ (rows: adapter j, columns: task t)",
            "",
            markdown_table(interference_rows(matrices), cols),
            "",
            f"Mean off-diagonal ratio per init: {summary}.",
        ]
    if budget_rows:
        lines += ["", "## Training budgets", "", BUDGET_NOTE, "",
                  markdown_table(budget_rows, BUDGET_COLUMNS)]  # fmt: skip
    for title, table, columns in history:
        lines += ["", f"## {title}", "", markdown_table(table, columns)]
    return "\n".join(lines) + "\n"


def _bold(rows: Sequence[Mapping], columns: Mapping[str, str]) -> list[dict]:
    """``rows`` with each column's best merged score as bold Markdown text."""
    best = best_cells(rows, columns)
    return [{k: f"**{v:.3f}**" if (i, k) in best else v for k, v in r.items()}
            for i, r in enumerate(rows)]  # fmt: skip


def _html_table(
    rows: Sequence[Mapping], columns: Mapping[str, str], best: set[tuple[int, str]] = frozenset()
) -> str:
    def cell(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in columns.values())
    body = "".join(
        "<tr>" + "".join(f"<td{' class=best' if (i, k) in best else ''}>{cell(r.get(k))}</td>"
                         for k in columns) + "</tr>"
        for i, r in enumerate(rows)
    )  # fmt: skip
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_report(
    cfg: ExperimentConfig,
    rows: Sequence[Mapping],
    matrices: Matrices,
    images: Mapping[str, Path],
    budget_rows: Sequence[Mapping] = (),
    judged: Mapping | None = None,
    history: Sequence[tuple[str, list, dict]] = (),
) -> str:
    """One page, no external resources: tables inline, PNGs as data URIs, each figure captioned
    by what it shows (``images``: :data:`CAPTIONS` key -> PNG)."""
    tasks = cfg.task_names
    figures = "".join(
        f'<figure><img alt="{html.escape(CAPTIONS[k])}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(CAPTIONS[k])}'
        "</figcaption></figure>"
        for k, p in images.items()
    )
    columns = result_columns(cfg, rows)
    scores, inter = _html_table(rows, columns, best_cells(rows, columns)), ""
    if matrices:
        cols = {"init": "init", "adapter": "adapter j", **{t: t for t in tasks}}
        inter = "<h2>Interference ratios</h2>" + _html_table(interference_rows(matrices), cols)
    if budget_rows:
        inter += (
            f"<h2>Training budgets</h2><p>{html.escape(BUDGET_NOTE.replace('`', ''))}</p>"
            + _html_table(budget_rows, BUDGET_COLUMNS)
        )
    for title, table, columns in history:
        inter += f"<h2>{html.escape(title)}</h2>" + _html_table(table, columns)
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
        "th{background:#eee}img{max-width:100%}figure{margin:1em 0}"
        "td.best{background:#d9f2d9;font-weight:bold}figcaption{font-size:13px;color:#333}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>osrm report</title>"
        f"<style>{style}</style></head><body><h1>osrm results: {html.escape(cfg.run_dir)}</h1>"
        f"<p>Model {html.escape(cfg.model.name)}, tasks {html.escape(', '.join(tasks))}, "
        f"split {cfg.eval.split}, osrm {__version__}.</p>"
        f"{verdict_html(judged)}<h2>Scores</h2>"
        f"<p>{SCORES_NOTE}</p>{scores}{inter}<h2>Plots</h2>{figures}"
        f"<h2>Config</h2><pre>{html.escape(dump_config(cfg))}</pre></body></html>\n"
    )


def report_stage(
    cfg: ExperimentConfig,
    run_dir: Path,
    results: Sequence[Result],
    matrices: Matrices,
    budgets: Budgets | None = None,
    seed_runs: Sequence[Sequence[Result]] = (),
) -> dict:
    """Write every report artifact; return the table rows and the paths written. ``budgets``
    (``budget_diagnostics.json``) adds the "Training budgets" table and its three plots;
    ``seed_runs`` (the results of the same config's runs with other seeds) pool into the
    verdict (mean ± spread)."""
    tasks = cfg.task_names
    rows = results_table(results, tasks)
    judged = verdict([rows, *(results_table(r, tasks) for r in seed_runs)])
    final = [r for r in rows if "step" not in r]  # the plots show the final adapters
    images = {
        "scale": plot_scale_curves(final, run_path(run_dir, PLOT_FILES["scale"])),
        "best": plot_best_bars(final, tasks, run_path(run_dir, PLOT_FILES["best"])),
    }
    if matrices:
        images["interference"] = plot_interference(
            matrices, run_path(run_dir, PLOT_FILES["interference"])
        )
    steps = budget_table(rows, budgets["rows"]) if budgets else []
    plots = {"budget_scores": plot_budget_scores, "budget_interference": plot_budget_interference,
             "budget_drift": plot_budget_drift}  # fmt: skip
    images |= {k: plot(steps, run_path(run_dir, PLOT_FILES[k])) for k, plot in plots.items()
               if steps}  # fmt: skip
    history = history_sections(cfg, run_dir)
    texts = {
        "markdown": markdown_report(cfg, rows, matrices, steps, judged, history),
        "csv": csv_table(rows, result_columns(cfg, rows)),
        "html": html_report(cfg, rows, matrices, images, steps, judged, history),
    }
    paths = {k: write_text(run_path(run_dir, REPORT_FILES[k]), text) for k, text in texts.items()}
    return {"rows": rows, "paths": paths, "images": images}
