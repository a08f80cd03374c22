"""docs/RESULTS.md (bench/report.py): "Does it hold with training?", the budget study
(bench/budget.py): per budget, mean ± spread over seeds of the merged and single-task averages,
the diagnostics, the goal check of issue 15 and the figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from osrm.report import markdown_table
from report_budget_claims import claim_lines
from report_common import FIGURES, Inputs, ms, plural, shown, stamp

# columns, in order, when present: each method's best setting with the given weights, then
# (issue 16) with weights from the statistics (best scale, and at scale 1: no search at all)
METHODS = ("task_arithmetic", "task_arithmetic+auto", "task_arithmetic+auto@1", "ties",
           "ties+auto", "dare_ties", "regmean")  # fmt: skip
NOTES = Path(__file__).with_name("budget_interpretation.md")


def _cell(row: Mapping, method: str, key: str) -> str:
    entry = row.get(method)
    if not entry:
        return ""
    hp = f" ({entry['hp'].split(',')[0]})" if method in METHODS[:2] else ""
    return ms(entry.get(key)) + hp


def headline_table(rows: Sequence[Mapping], key: str) -> str:
    """One line per (step, setting): the individual average and each method's ``key``."""
    methods = [m for m in METHODS if any(m in r for r in rows)]
    table = [
        {"step": r["step"], "label": r["label"], "individual": ms(r["individual"]),
         **{m: _cell(r, m, key) for m in methods}}
        for r in sorted(rows, key=lambda r: (r["step"], r["label"]))
    ]  # fmt: skip
    columns = {"step": "steps", "label": "setting", "individual": "single-task avg",
               **{m: m for m in methods}}  # fmt: skip
    return markdown_table(table, columns)


def diagnostics_table(rows: Sequence[Mapping]) -> str:
    """Interference, drift of A from its init and the energies of A's row space per step."""
    keys = {"interference": "interference", "drift_deg": "drift of A (deg)",
            "own_energy": "own-task energy", "other_energy": "other-task energy"}  # fmt: skip

    def cell(key: str, stat: Mapping | None) -> str:  # energies are fractions of a few %
        if not stat or "energy" not in key:
            return ms(stat)
        if stat.get("n", 0) <= 1:
            return f"{100 * stat['mean']:.2f} %"
        return f"{100 * stat['mean']:.2f} ± {100 * stat['spread']:.2f} %"

    table = [
        {"step": r["step"], "label": r["label"], **{k: cell(k, r.get(k)) for k in keys}}
        for r in sorted(rows, key=lambda r: (r["step"], r["label"]))
        if any(r.get(k) for k in keys)
    ]
    return markdown_table(table, {"step": "steps", "label": "setting", **keys})


def goal_lines(goal: Mapping) -> list[str]:
    """The goal check, one line per setting: its merged gain over `lora` with the least margin
    over the seed spreads and its largest single-task loss, each with where it happens."""
    lines = []
    for label, g in goal.items():
        if not g["checks"]:
            continue
        gain = min(g["checks"], key=lambda c: c["diff"] - c["spread"])
        single = min(g["checks"], key=lambda c: c["single_diff"])
        verdict = "**met**" if g["met"] else "not met"
        lines.append(
            f"- `{label}`: {verdict}. Closest call (gain in normalised merged average over `lora`, "
            "least above the seed spreads): "
            f"{gain['diff']:+.3f} ({gain['method']}, {gain['step']} steps; seed spreads added "
            f"{gain['spread']:.3f}); single-task average at worst {single['single_diff']:+.3f} "
            f"({single['step']} steps)."
        )
    return lines


def issue16_lines(data: Mapping) -> list[str]:
    """Retrofitted `lora` against `osrm`-trained adapters, and auto weights against the grid."""
    lines = []
    for label, g in (data.get("retrofit_goal") or {}).items():
        if not g["checks"]:
            continue
        worst = min(g["checks"], key=lambda c: c["diff"])
        single = max(g["checks"], key=lambda c: abs(c["single_diff"]))
        verdict = "**met**" if g["met"] else "not met"
        lines.append(
            f"- `{label}` against `osrm`: {verdict}. Smallest normalised merged difference "
            f"{worst['diff']:+.3f} ({worst['method']}, {worst['step']} steps); single-task "
            f"average against the adapters it was made from at most {single['single_diff']:+.3f}."
        )
    gaps = data.get("auto_gap") or []
    if gaps:
        table = [{"step": g["step"], "label": g["label"], "auto": f"{g['auto']:.3f}",
                  "grid": f"{g['best_grid']:.3f} ({g['best_hp']})", "gap": f"{g['gap']:+.3f}",
                  "one": "" if g["gap_one"] is None else f"{g['gap_one']:+.3f}"}
                 for g in sorted(gaps, key=lambda g: (g["step"], g["label"]))]  # fmt: skip
        columns = {"step": "steps", "label": "setting", "auto": "TA, auto weights, scale 1",
                   "grid": "TA, best grid scale", "gap": "gap", "one": "gap, scale 1"}  # fmt: skip
        lines += ["", "Task arithmetic with weights from the statistics (no search) against "
                  "the best scale of the grid and against scale 1 (normalised averages, mean "
                  "over seeds):", "", markdown_table(table, columns)]  # fmt: skip
    return lines


def runs_line(data: Mapping) -> str:
    """``9 of 15 planned runs (…)``: how much of the study the file holds and what it cost."""
    done, planned = len(data["jobs"]), data.get("planned_runs")
    hours = sum(j["seconds"] for j in data["jobs"]) / 3600
    left = "" if not planned or done >= planned else f" of {planned} planned; the rest not run yet"
    return (
        f"{plural(done, 'run')}{left} ({hours:.1f} h of run time in all, two runs at a time, "
        "each single-threaded)"
    )


def budget_body(inputs: Inputs, data: dict) -> list[str]:
    """The section's lines from ``budget.json``."""
    rows, variant = data["headline"], data.get("variant", "full")
    name = "budget" if variant == "full" else f"budget-{variant}"
    figures = [f"![{k}]({FIGURES}/budget-{variant}-{k}.png)" for k in ("merged", "diagnostics")]
    labels = list(dict.fromkeys(j["label"] for j in data["jobs"]))
    notes = NOTES.read_text().strip().splitlines() if NOTES.is_file() and variant == "full" else []
    return [
        stamp(inputs, name, data),
        "",
        f"{plural(len(data['tasks']), 'task')} ({', '.join(data['tasks'])}); budgets "
        f"{', '.join(map(str, data['budgets']))} steps along one trajectory per run; settings "
        f"{', '.join(f'`{x}`' for x in labels)}; "
        f"{runs_line(data)}. Cells: mean ± spread over seeds (the mean alone "
        "for one seed); task arithmetic at the λ with the best mean normalised average (in "
        "parentheses). `+sub` = "
        "`lora.a_subspace` = rank, `+pen` = `train.interference_penalty` = 1. Raw: "
        f"`{shown(inputs.results / f'{name}.json')}`.",
        "",
        "Normalised merged average (merged / individual of the same setting and step):",
        "",
        headline_table(rows, "norm_avg"),
        "",
        "Absolute merged average:",
        "",
        headline_table(rows, "avg"),
        "",
        "Interference (mean off-diagonal ratio), drift of A from its initial row space (mean "
        "principal angle) and the energy of A's row space on its own and the other tasks' inputs:",
        "",
        diagnostics_table(rows),
        "",
        *claim_lines(rows),
        "Goal (issue 15): a setting beats `lora` by at least 0.02 normalised average at every "
        "budget for task arithmetic and TIES, by more than the two seed spreads added, with its "
        "single-task average no more than 0.005 below:",
        "",
        *goal_lines(data["goal"]),
        "",
        *(
            [
                "Issue 16, on the same runs (no extra training): retrofitted `lora` adapters and "
                "task weights from the statistics.",
                "",
                *extra,
                "",
            ]
            if (extra := issue16_lines(data))
            else []
        ),
        *figures,
        "",
        *notes,
        *([""] if notes else []),
    ]
