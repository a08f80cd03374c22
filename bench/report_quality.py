"""docs/RESULTS.md (bench/report.py): the quality sections (headline, fixed settings,
single-task, per-task, robustness, interference and subspace tables)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence

from osrm.report import markdown_table
from report_common import (
    FIGURES,
    HEADLINE,
    NO_NORM,
    NO_NORM_WHY,
    POOLED_NOTE,
    ROBUSTNESS,
    Inputs,
    Row,
    guarded,
    mean_spread,
    not_run,
    plural,
    section,
    seeds_of,
    stamp,
)
from report_picks import best_settings, fixed_settings, hp_table, merged_rows, norm_mean, pick_table


def setup_line(data: Mapping) -> str:
    """What was trained: model, LoRA rank and targets, tasks, inits, steps (from the config)."""
    cfg = data["runs"][0]["config"]
    lora, train = cfg.get("lora", {}), cfg.get("train", {})
    tasks = data["aggregate"]["tasks"]
    targets = " on " + ", ".join(lora["target_modules"]) if lora.get("target_modules") else ""
    frozen = ""
    if train.get("frozen_a_steps") or train.get("frozen_a_lr"):  # B-only adapters train longer
        frozen = (
            f" (inits with a frozen A: {train.get('frozen_a_steps') or train.get('steps', '?')} "
            f"steps at lr {train.get('frozen_a_lr') or train.get('lr', '?')})"
        )
    return (
        f"Setup: `{cfg.get('model', {}).get('name', '?')}`, LoRA r={lora.get('rank', '?')}"
        f"{targets}, {train.get('steps', '?')} steps at lr "
        f"{train.get('lr', '?')}{frozen}; {plural(len(tasks), 'task')} ({', '.join(tasks)}); "
        f"inits {', '.join(data['aggregate']['inits'])}."
    )


def headline(data: Mapping) -> list[str]:
    """Best-setting normalised merged average per init × method, with the chosen settings."""
    agg = data["aggregate"]
    picks = best_settings(merged_rows(agg))
    if not picks:
        return [NO_NORM, ""]
    return [
        f"Normalised merged average (each task's merged score / the same init's individual "
        f"adapter, averaged over the {plural(len(agg['tasks']), 'task')}; 1.0 = merging lost "
        "nothing), "
        f"mean ± spread (population std) over {seeds_of(data)}, at each method's best setting "
        "for the init (highest mean over its grid). **Bold**: the best init for the method."
        + (POOLED_NOTE if data.get("pooled_seed_settings") else ""),
        "",
        pick_table(picks, agg["inits"]),
        "",
        "The settings chosen:",
        "",
        hp_table(picks, agg["inits"]),
        "",
    ]


def fixed_section(data: Mapping) -> list[str]:
    """The same table at each method's fixed (documented default) setting."""
    fixed = data.get("fixed") or {}
    picks = fixed_settings(merged_rows(data["aggregate"]), fixed)
    if not picks:
        return ["No fixed settings recorded (or none matched a merged result).", ""]
    settings = ", ".join(f"{m} `{hp or '-'}`" for m, hp in fixed.items())
    return [
        f"Normalised merged average at fixed settings (no tuning): {settings}. **Bold**: the "
        "best init for the method.",
        "",
        pick_table(picks, data["aggregate"]["inits"]),
        "",
    ]


def individual_section(data: Mapping) -> list[str]:
    """Single-task scores of the individual adapters per init × task, mean ± spread."""
    agg = data["aggregate"]
    cols = [*agg["tasks"], "avg"]
    rows = [
        {"init": r["init"], **{c: mean_spread(r.get(c)) for c in cols}}
        for r in agg["rows"]
        if r["model"] == "individual"
    ]
    return [
        "Each task's main metric on its test split, one adapter per task (before merging), "
        f"mean ± spread over {seeds_of(data)}.",
        "",
        markdown_table(rows, {"init": "init", **{c: c for c in cols}}),
        "",
    ]


def per_task_section(data: Mapping) -> list[str]:
    """Per-task merged scores (means) at the best setting of the headline methods."""
    agg = data["aggregate"]
    picks = best_settings(merged_rows(agg))
    rows = [
        {
            "init": i,
            "method": m,
            "hp": picks[i, m]["hp"],
            "norm_avg": norm_mean(picks[i, m]),
            **{c: picks[i, m][c]["mean"] for c in [*agg["tasks"], "avg"] if picks[i, m].get(c)},
        }
        for m in HEADLINE
        for i in agg["inits"]
        if (i, m) in picks
    ]
    if not rows:
        return [NO_NORM, ""]
    columns = {
        "init": "init",
        "method": "method",
        "hp": "setting",
        **{t: t for t in agg["tasks"]},
        "avg": "avg",
        "norm_avg": "norm. avg",
    }
    return [
        f"Merged model's score per task (mean over seeds) at the best setting of "
        f"{' and '.join(HEADLINE)} for each init.",
        "",
        markdown_table(rows, columns),
        "",
    ]


def scale_grid(rows: Sequence[Row], method: str = ROBUSTNESS) -> dict[str, dict[str, float]]:
    """Per init, the method's normalised average (mean) at each setting of its grid."""
    grid: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["method"] == method:
            grid.setdefault(str(r["init"]), {})[str(r["hp"])] = norm_mean(r)
    return grid


def grid_spread(curve: Mapping[str, float]) -> float:
    """Max − min of the normalised average over a grid (lower = more robust)."""
    return max(curve.values()) - min(curve.values())


def robustness_section(data: Mapping) -> list[str]:
    """The robustness method's normalised average over its scale grid, and the grid spread."""
    grid = scale_grid(merged_rows(data["aggregate"]))
    if not grid:
        return [f"No {ROBUSTNESS} result with a normalised average. {NO_NORM_WHY}", ""]
    settings = list(dict.fromkeys(hp for curve in grid.values() for hp in curve))
    rows = [{"init": i, **curve, "spread": grid_spread(curve)} for i, curve in grid.items()]
    variant = data.get("variant", "full")
    return [
        f"{ROBUSTNESS}: normalised merged average (mean over seeds) at each setting of its grid; "
        "spread = max − min over the grid (lower = more robust to the merging hyperparameter).",
        "",
        markdown_table(rows, {"init": "init", **{s: s for s in settings}, "spread": "spread"}),
        "",
        f"![{ROBUSTNESS} normalised average vs scale]({FIGURES}/quality-{variant}-scale.png)",
        "",
    ]


def off_diagonal_mean(matrix: Mapping[str, Mapping[str, float]]) -> float | None:
    """Mean over i ≠ j of an interference matrix's ratios (None when there are none)."""
    off = [v for i, row in matrix.items() for j, v in row.items() if i != j]
    return statistics.fmean(off) if off else None


def interference_section(data: Mapping) -> list[str]:
    """Per init, the mean off-diagonal interference ratio, and the heat map."""
    matrices = data["aggregate"]["interference"]
    rows = [{"init": i, "mean": off_diagonal_mean(m)} for i, m in matrices.items()]
    variant = data.get("variant", "full")
    return [
        "Cross-task interference ratio ‖ΔW_j X_tᵀ‖ / ‖ΔW_t X_tᵀ‖ (how strongly task j's adapter "
        "responds to task t's inputs, relative to t's own adapter), mean over task pairs j ≠ t "
        "(lower = adapters disturb each other less).",
        "",
        markdown_table(rows, {"init": "init", "mean": "mean off-diagonal ratio"}),
        "",
        f"![interference heat map]({FIGURES}/quality-{variant}-interference.png)",
        "",
    ]


SUBSPACE_KEYS = {
    "other": "other tasks' energy",
    "own": "own task's energy",
    "other_random": "other tasks' energy, random A",
    "overlap": "overlap",
}


def subspace_section(data: Mapping) -> list[str]:
    """Per subspace mode, the mean over tasks of the captured energy fractions and overlap."""
    run = data["runs"][0]
    rows = [
        {"mode": mode, **{k: statistics.fmean(t[k] for t in per_task) for k in SUBSPACE_KEYS}}
        for mode, per_task in run["subspace"].items()
        if per_task
    ]
    return [
        f"Seed {run.get('seed', '?')}: fraction of the other tasks' (and the task's own) input "
        "covariance energy captured by each task's OSRM A (per mode), against a random "
        "orthonormal A, and the subspace overlap between tasks; mean over tasks.",
        "",
        markdown_table(rows, {"mode": "mode", **SUBSPACE_KEYS}),
        "",
    ]


QUALITY_PARTS: dict[str, Callable[[Mapping], list[str]]] = {
    "Fixed settings": fixed_section,
    "Single-task scores (individual adapters)": individual_section,
    "Merged scores per task": per_task_section,
    "Robustness to the merging scale λ": robustness_section,
    "Interference": interference_section,
    "Subspace diagnostics": subspace_section,
}


def quality_body(inputs: Inputs, data: dict | None) -> list[str]:
    """The quality section: stamp, setup, headline, then the other tables."""
    if data is None:
        return [not_run(inputs, "quality"), ""]
    lines = [stamp(inputs, "quality", data), "", *guarded(lambda: [setup_line(data), ""], "setup")]
    lines += section("Best setting per method", lambda: headline(data), level=3)
    for title, part in QUALITY_PARTS.items():
        lines += section(title, lambda part=part: part(data), level=3)
    return lines


def quick_body(inputs: Inputs, data: dict) -> list[str]:
    """The quick variant's stamp and headline only."""
    return [stamp(inputs, "quality-quick", data), "", *headline(data)]
