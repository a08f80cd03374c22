"""docs/RESULTS.md (bench/report.py): "Merge-ready without retraining" (bench/retrofit.py):
retrofitted `lora` adapters against `osrm`-trained ones and plain `lora`, every method; task
weights from the statistics against each method's best grid setting and its default."""

from __future__ import annotations

from collections.abc import Mapping

from osrm.report import markdown_table
from report_common import METHOD_ORDER, Inputs, ms, plural, shown, stamp

SINGLE_POINTS, AUTO_POINTS = 0.01, 0.01  # issue 16: within 1 point


def series_table(rows: list[Mapping]) -> str:
    """Per series: single-task average and each method's best grid normalised average."""
    table = [{"init": r["init"], "individual": ms(r["individual"]),
              **{m: ms((r.get(m) or {}).get("best", {}).get("norm_avg")) for m in METHOD_ORDER}}
             for r in rows]  # fmt: skip
    return markdown_table(table, {"init": "adapters", "individual": "single-task avg",
                                  **{m: m for m in METHOD_ORDER}})  # fmt: skip


def auto_table(rows: list[Mapping]) -> str:
    """Per series × method: auto weights, the default setting, the best grid setting."""
    table = []
    for r in rows:
        for m in METHOD_ORDER:
            cell = r.get(m) or {}
            if "auto" not in cell or "best" not in cell:
                continue
            auto, best = cell["auto"]["norm_avg"]["mean"], cell["best"]["norm_avg"]["mean"]
            default = (cell.get("default") or {}).get("norm_avg")
            table.append({
                "init": r["init"], "method": m, "auto": f"{auto:.3f}",
                "default": "" if not default else f"{default['mean']:.3f}",
                "best": f"{best:.3f} ({cell['best']['hp'] or '-'})", "gap": f"{auto - best:+.3f}",
                "gap_default": "" if not default else f"{auto - default['mean']:+.3f}",
            })  # fmt: skip
    columns = {"init": "adapters", "method": "method", "auto": "auto weights",
               "default": "default setting", "best": "best grid setting", "gap": "auto − best",
               "gap_default": "auto − default"}  # fmt: skip
    return markdown_table(table, columns)


def goal_lines(rows: list[Mapping]) -> list[str]:
    """Issue 16's goals, per retrofit μ and for auto weights on task arithmetic."""
    by = {r["init"]: r for r in rows}
    osrm, lora = by.get("osrm"), by.get("lora")
    lines = []
    for init, r in by.items():
        if "+rf" not in init or not osrm or not lora:
            continue
        both = [m for m in METHOD_ORDER if (r.get(m) or {}).get("best")
                and (osrm.get(m) or {}).get("best")]  # fmt: skip
        diffs = {m: r[m]["best"]["norm_avg"]["mean"] - osrm[m]["best"]["norm_avg"]["mean"]
                 for m in both}  # fmt: skip
        if not diffs:  # no method has a normalised average for both (weak adapters)
            continue
        worst = min(diffs, key=diffs.get)
        single = r["individual"]["mean"] - lora["individual"]["mean"]
        met = min(diffs.values()) >= 0 and abs(single) <= SINGLE_POINTS
        lines.append(
            f"- `{init}`: {'**met**' if met else 'not met'}: merged at least as well as `osrm` for "
            f"{sum(d >= 0 for d in diffs.values())} of {len(diffs)} methods (worst {worst} "
            f"{diffs[worst]:+.3f}); single-task average {single:+.3f} against `lora`."
        )
    for init, r in by.items():
        ta = r.get("task_arithmetic") or {}
        if "auto" in ta and "best" in ta:
            gap = ta["auto"]["norm_avg"]["mean"] - ta["best"]["norm_avg"]["mean"]
            verdict = "**met**" if gap >= -AUTO_POINTS else "not met"
            lines.append(f"- task arithmetic, `{init}`: auto weights {gap:+.3f} against the best "
                         f"λ of the grid: {verdict}.")  # fmt: skip
    return lines


def retrofit_body(inputs: Inputs, data: dict) -> list[str]:
    """The section's lines from ``retrofit.json``."""
    name = "retrofit" if data.get("variant") == "full" else f"retrofit-{data.get('variant')}"
    rows = data["rows"]
    return [
        stamp(inputs, name, data),
        "",
        f"{plural(len(data['tasks']), 'task')} ({', '.join(data['tasks'])}); `lora` and `osrm` "
        f"trained, `lora` retrofitted at μ ∈ {{{', '.join(f'{m:g}' for m in data['mus'])}}} "
        "(`lora+rf<μ>`, no training). Cells: mean ± spread over seeds. Raw: "
        f"`{shown(inputs.results / f'{name}.json')}`.",
        "",
        "Best normalised merged average over each method's grid (given weights):",
        "",
        series_table(rows),
        "",
        "Task weights from the statistics (`weights: auto`, each method at its default setting) "
        "against the default setting and the best grid setting (normalised averages):",
        "",
        auto_table(rows),
        "",
        "Goals (issue 16): retrofitted adapters merge at least as well as `osrm`-trained ones "
        "with single-task scores within 0.01 of the originals; auto weights within 0.01 of the "
        "best grid λ for task arithmetic:",
        "",
        *goal_lines(rows),
        "",
    ]
