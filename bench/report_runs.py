"""docs/RESULTS.md (bench/report.py): the decoder, GPU-run and single-task benchmark sections."""

from __future__ import annotations

import re
from pathlib import Path

from osrm.report import markdown_table, read_results, results_table, table_columns
from report_common import Inputs, shown, stamp
from report_picks import best_settings, merged_rows, methods_of
from report_quality import off_diagonal_mean


def decoder_body(inputs: Inputs, data: dict) -> list[str]:
    """Per init: the individual average and each method's best normalised average (decoder)."""
    rows = data["rows"]
    picks = best_settings(merged_rows(data), score=lambda r: r["norm_avg"])  # type: ignore
    methods = methods_of(list(picks.values()))
    individual = {r["init"]: r.get("avg") for r in rows if r["model"] == "individual"}
    interference = data.get("interference") or {}
    table = [
        {
            "init": i,
            "individual": individual.get(i),
            "interference": off_diagonal_mean(interference[i]) if i in interference else None,
            **{
                m: f"{picks[i, m]['norm_avg']:.3f} ({picks[i, m]['hp'] or '-'})"
                for m in methods
                if (i, m) in picks
            },
        }
        for i in dict.fromkeys(r["init"] for r in rows)
    ]
    columns = {
        "init": "init",
        "individual": "individual avg",
        **{m: m for m in methods},
        "interference": "mean interference",
    }
    return [
        stamp(inputs, "decoder", data),
        "",
        f"Tasks: {', '.join(data.get('tasks', []))}. Individual avg = mean single-task score of "
        "the init's own adapters; per method, the best normalised merged average over its grid "
        "(setting in parentheses); mean interference = mean off-diagonal ratio.",
        "",
        markdown_table(table, columns),
        "",
    ]


def gpu_run(results: Path) -> dict | None:
    """``<results>/gpu/``'s ``osrm run`` output (bench/gpu.sh) in decoder_body's shape."""
    folder = results / "gpu"
    found = read_results(folder / "results.jsonl")
    if not found:
        return None
    tasks = list(dict.fromkeys(r.task for r in found))
    log = (folder / "run.log").read_text() if (folder / "run.log").is_file() else ""
    exit_line = next((ln for ln in reversed(log.splitlines()) if ln.startswith("exit ")), "")
    means = re.search(r"mean cross-task interference ratio: (.*)", log)
    interference = dict(re.findall(r"(\w+) ([0-9.]+)", means.group(1))) if means else {}
    return {"tasks": tasks, "rows": results_table(found, tasks), "exit": exit_line,
            "interference_means": {k: float(v) for k, v in interference.items()}}  # fmt: skip


def gpu_body(results: Path, data: dict) -> list[str]:
    """The GPU run: how it was made, then its full results table."""
    lines = [
        "Stamp: command `bash bench/gpu.sh` (after `bash bench/gpu_bundle.sh`) on one NVIDIA H200; "
        f"versions and caveats in `{shown(results / 'gpu' / 'README.md')}` · {data['exit']}.",
        "",
        "Larger limits than the CPU suite (300 steps at lr 1e-3, length 128, 256 statistics "
        "examples, ≤ 500 test examples), but one seed, two inits and three methods: the full CPU "
        "grid at these limits did not finish its first seed in the 500 s the GPU could be held.",
        "",
        markdown_table(data["rows"], table_columns(data["tasks"])),
        "",
    ]
    if data["interference_means"]:
        means = ", ".join(f"{k} {v:.3f}" for k, v in data["interference_means"].items())
        lines += [f"Mean cross-task interference ratio: {means}.", ""]
    return lines


def single_task_body(inputs: Inputs, data: dict, name: str = "single_task") -> list[str]:
    """The single-task benchmark's table: per task, each init's test score (and their mean)."""
    rows = data["rows"]
    inits = [k for k in rows[0] if k not in ("task", "metric")]
    train = data.get("config", {}).get("train", {})
    evals = data.get("config", {}).get("eval", {}).get("max_eval_examples", "?")
    return [
        stamp(inputs, name, data),
        "",
        f"Test score of each task's main metric, one adapter per task and init, "
        f"{train.get('steps', '?')} steps at lr {train.get('lr', '?')}, ≤ {evals} test examples.",
        "",
        markdown_table(rows, {"task": "task", "metric": "metric", **{i: i for i in inits}}),
        "",
    ]
