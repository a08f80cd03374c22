"""Stage 4: ``results.md``, ``results.csv``, PNG plots and one self-contained ``report.html``."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path

from osrm import __version__
from osrm.config import ExperimentConfig, dump_config
from osrm.diagnostics import summarise_interference
from osrm.plots import plot_best_bars, plot_interference, plot_scale_curves
from osrm.report import (
    Result,
    csv_table,
    interference_rows,
    markdown_table,
    results_table,
    table_columns,
)
from osrm.rundir import PLOT_FILES, REPORT_FILES, run_path, write_text

Matrices = Mapping[str, Mapping[str, Mapping[str, float]]]


def result_columns(cfg: ExperimentConfig, rows: Sequence[Mapping]) -> dict[str, str]:
    """The table's columns: with ``step`` when budgets were scored (blank: final adapters)."""
    return table_columns(cfg.task_names, steps=any("step" in r for r in rows))


def markdown_report(cfg: ExperimentConfig, rows: Sequence[Mapping], matrices: Matrices) -> str:
    tasks = cfg.task_names
    lines = [
        f"# osrm results: {cfg.run_dir}",
        "",
        f"Model `{cfg.model.name}`, LoRA r={cfg.lora.rank} alpha={cfg.lora.alpha} on "
        f"{cfg.lora.target_modules}, {cfg.train.steps} steps, seed {cfg.seed}; scores are each "
        f"task's main metric on its `{cfg.eval.split}` split; `norm. avg` = mean over tasks of "
        "merged / individual score of the same init. osrm " + __version__ + ".",
        "",
        markdown_table(rows, result_columns(cfg, rows)),
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
    return "\n".join(lines) + "\n"


def _html_table(rows: Sequence[Mapping], columns: Mapping[str, str]) -> str:
    def cell(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in columns.values())
    body = "".join(
        "<tr>" + "".join(f"<td>{cell(r.get(k))}</td>" for k in columns) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_report(
    cfg: ExperimentConfig, rows: Sequence[Mapping], matrices: Matrices, images: Sequence[Path]
) -> str:
    """One page, no external resources: tables inline, PNGs as data URIs."""
    tasks = cfg.task_names
    figures = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{p.stem}</figcaption></figure>'
        for p in images
    )
    scores, inter = _html_table(rows, result_columns(cfg, rows)), ""
    if matrices:
        cols = {"init": "init", "adapter": "adapter j", **{t: t for t in tasks}}
        inter = "<h2>Interference ratios</h2>" + _html_table(interference_rows(matrices), cols)
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
        "th{background:#eee}img{max-width:100%}figure{margin:1em 0}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>osrm report</title>"
        f"<style>{style}</style></head><body><h1>osrm results: {html.escape(cfg.run_dir)}</h1>"
        f"<p>Model {html.escape(cfg.model.name)}, tasks {html.escape(', '.join(tasks))}, "
        f"split {cfg.eval.split}, osrm {__version__}.</p>"
        f"<h2>Scores</h2>{scores}{inter}<h2>Plots</h2>{figures}"
        f"<h2>Config</h2><pre>{html.escape(dump_config(cfg))}</pre></body></html>\n"
    )


def report_stage(
    cfg: ExperimentConfig, run_dir: Path, results: Sequence[Result], matrices: Matrices
) -> dict:
    """Write every report artifact; return the table rows and the paths written."""
    tasks = cfg.task_names
    rows = results_table(results, tasks)
    final = [r for r in rows if "step" not in r]  # the plots show the final adapters
    images = [
        plot_scale_curves(final, run_path(run_dir, PLOT_FILES["scale"])),
        plot_best_bars(final, tasks, run_path(run_dir, PLOT_FILES["best"])),
    ]
    if matrices:
        images.append(plot_interference(matrices, run_path(run_dir, PLOT_FILES["interference"])))
    texts = {
        "markdown": markdown_report(cfg, rows, matrices),
        "csv": csv_table(rows, result_columns(cfg, rows)),
        "html": html_report(cfg, rows, matrices, images),
    }
    paths = {k: write_text(run_path(run_dir, REPORT_FILES[k]), text) for k, text in texts.items()}
    return {"rows": rows, "paths": paths, "images": images}
