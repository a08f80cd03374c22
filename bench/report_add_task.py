"""docs/RESULTS.md (bench/report.py): "Adding a task later" (bench/add_task.py): per init and
merge setting, the old tasks' merged average before and after `osrm add-task` and the new task's
merged score, with and without retrofitting the old adapters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from osrm.report import markdown_table
from report_common import BASELINE, Inputs, ms, shown, stamp

TA = "task_arithmetic"


def all_after(row: Mapping, suffix: str = "") -> float | None:
    """Mean merged score over every task after the addition (old ones and the new): normalised,
    or raw with ``suffix="_abs"``."""
    old, new = row.get("old_after" + suffix), row.get("new" + suffix)
    if not old or not new:
        return None
    k = row["n_old"]
    return (k * old["mean"] + new["mean"]) / (k + 1)


def shown_rows(rows: Sequence[Mapping]) -> list[Mapping]:
    """Per series and init: task arithmetic at scale 1 and at its λ with the best mean over every
    task after the addition, and TIES (all its settings)."""
    out = []
    for key in dict.fromkeys((r["series"], r["init"]) for r in rows):
        mine = [r for r in rows if (r["series"], r["init"]) == key]
        ta = [r for r in mine if r["method"] == TA]
        best = max((r for r in ta if all_after(r) is not None), key=all_after, default=None)
        at_one = [r for r in ta if r["hp"] == "scale=1.0"]
        picked = [*at_one, *([best] if best and best not in at_one else [])]
        out += [{**r, "pick": [p for p, hit in (("λ=1", r in at_one), ("best λ", r is best))
                               if hit]} for r in picked]  # fmt: skip
        out += [{**r, "pick": []} for r in mine if r["method"] != TA]
    return out


def change(row: Mapping) -> str:
    before, after = row.get("old_before"), row.get("old_after")
    if not before or not after:
        return ""
    return f"{100 * (after['mean'] - before['mean']):+.1f} pts"


def table(rows: Sequence[Mapping]) -> str:
    body = [{"series": r["series"], "init": r["init"], "method": r["method"],
             "hp": f"{r['hp'] or 'defaults'}" + (f" ({', '.join(r['pick'])})" if r["pick"] else ""),
             "single": f"{ms(r['old_single_before'])} → {ms(r['old_single_after'])}",
             "new_single": ms(r.get("new_single")),
             "before": ms(r["old_before"]), "after": ms(r["old_after"]), "change": change(r),
             "new": ms(r["new"]), "all": "" if all_after(r) is None else f"{all_after(r):.3f}",
             "raw": "" if all_after(r, "_abs") is None else f"{all_after(r, '_abs'):.3f}"}
            for r in rows]  # fmt: skip
    columns = {"series": "addition", "init": "adapters", "method": "method", "hp": "setting",
               "single": "old single-task avg (raw)", "new_single": "new single-task (raw)",
               "before": "old tasks merged, before", "after": "old tasks merged, after",
               "change": "old: after − before", "new": "new task merged",
               "all": "all tasks merged, after",
               "raw": "all tasks merged, after (raw)"}  # fmt: skip
    return markdown_table(body, columns)


def verdict(rows: Sequence[Mapping]) -> list[str]:
    """The OSRM-family init with the best mean over every task after the addition beside
    ``lora``, for each addition and each shown setting: normalised and raw (a weaker individual
    adapter flatters its normalised score), then each init's single-task averages."""
    lines = []
    for series in dict.fromkeys(r["series"] for r in rows):
        roles = dict.fromkeys((r["method"], p) for r in rows for p in r["pick"] or [""])
        for method, pick in roles:
            cells = {r["init"]: r for r in rows
                     if (r["series"], r["method"]) == (series, method)
                     and (pick in r["pick"] or not (pick or r["pick"]))
                     and all_after(r) is not None}  # fmt: skip
            family = {i: all_after(r) for i, r in cells.items() if i != BASELINE}
            if BASELINE not in cells or not family:
                continue
            best = max(family, key=family.get)
            norm = 100 * (family[best] - all_after(cells[BASELINE]))
            raws = [all_after(cells[i], "_abs") for i in (best, BASELINE)]
            raw = "" if None in raws else f", {100 * (raws[0] - raws[1]):+.1f} pts raw"
            setting = method + (f" ({pick})" if pick else "")
            lines.append(f"- `{series}`, {setting}: best OSRM-family init `{best}` "
                         f"{family[best]:.3f} vs `{BASELINE}` {all_after(cells[BASELINE]):.3f} "
                         f"normalised ({norm:+.1f} pts){raw}, over all tasks after the "
                         "addition.")  # fmt: skip
    return lines + single_lines(rows)


def single_lines(rows: Sequence[Mapping]) -> list[str]:
    """Each init's individual adapters (raw): the old tasks before the addition, the new task."""
    firsts = {r["init"]: r for r in rows if r["series"] == rows[0]["series"]} if rows else {}
    if not firsts or any("new_single" not in r for r in firsts.values()):
        return []
    parts = [f"`{i}` {r['old_single_before']['mean']:.3f} (old) / {r['new_single']['mean']:.3f} "
             "(new)" for i, r in firsts.items()]  # fmt: skip
    return [f"- Individual adapters, raw main metric: {'; '.join(parts)}."]


def add_task_body(inputs: Inputs, data: dict) -> list[str]:
    """The section's lines from ``add_task.json``."""
    name = "add_task" if data.get("variant") == "full" else f"add_task-{data.get('variant')}"
    k = len(data["old_tasks"])
    rows = shown_rows([{**r, "n_old": k} for r in data["rows"]])
    mu = data.get("interference_penalty")
    penalty = (f"; OSRM-family adapters (the new one too) trained with the interference penalty "
               f"`train.interference_penalty={mu:g}`" if mu else "")  # fmt: skip
    return [
        stamp(inputs, name, data),
        "",
        f"{k} tasks ({', '.join(f'`{t}`' for t in data['old_tasks'])}) trained and merged, then "
        f"`{data['new_task']}` added by `osrm add-task` from the old tasks' statistics only: "
        f"`added` keeps the old adapters, `added+rf{data['retrofit_mu']:g}` retrofits them "
        f"against the new task (`--retrofit-mu {data['retrofit_mu']:g}`){penalty}. Scores are "
        "merged scores normalised by each task's individual adapter as it was before the addition "
        "(a retrofitted adapter is measured against its original; the old tasks' average before "
        "and after the addition, the new task's score); `(raw)` columns average the main metric "
        "itself, which compares inits whose individual adapters differ; cells: mean ± spread "
        "over seeds "
        f"{', '.join(map(str, data['seeds']))}. Raw: `{shown(inputs.results / f'{name}.json')}`.",
        "",
        table(rows),
        "",
        *verdict(rows),
        "",
    ]
