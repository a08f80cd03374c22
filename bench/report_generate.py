"""docs/RESULTS.md (bench/report.py): "Generative tasks on a decoder" (bench/generate.py):
zero-shot, individual and merged scores of SmolLM2 adapters that answer from prompts (no heads),
per init, with the verdict's comparison of each method pooled over seeds."""

from __future__ import annotations

from collections.abc import Mapping

from osrm.report import markdown_table
from report_common import NO_NORM, Inputs, ms, shown, stamp


def generate_body(inputs: Inputs, data: dict) -> list[str]:
    """The section's lines from ``generate.json``."""
    name = "generate" if data.get("variant") == "full" else f"generate-{data.get('variant')}"
    averages = [{"label": label, "base": ms(a.get("base")), "individual": ms(a.get("individual"))}
                for label, a in data["averages"].items()]  # fmt: skip
    lines = [
        stamp(inputs, name, data),
        "",
        "Every task is answered from its prompt by the log-likelihood of each label's verbaliser "
        "(no heads). `zero-shot`: the base model prompted, before any training. Cells: mean ± "
        f"spread over seeds. Raw: `{shown(inputs.results / f'{name}.json')}`.",
        "",
        markdown_table(
            averages, {"label": "adapters", "base": "zero-shot avg", "individual": "individual avg"}
        ),  # fmt: skip
        "",
    ]
    lines += task_lines(data.get("tasks") or {})
    v = data.get("verdict")
    if not v:
        return [*lines, NO_NORM, ""]
    labels = list(dict.fromkeys(i for r in v["rows"] for i in r["cells"]))
    rows = [{"method": r["method"], "setting": r["choice"],
             **{i: f"{ms(r['cells'][i])} ({r['cells'][i]['hp'] or 'defaults'})"
                for i in labels if i in r["cells"]},
             "diff": "" if r["family_minus_lora"] is None
             else f"{100 * r['family_minus_lora']:+.1f} pts"} for r in v["rows"]]  # fmt: skip
    b = v["best"]
    return [
        *lines,
        "Normalised merged average per method (`best`: its best grid setting; `fixed`: its "
        "default hyperparameters):",
        "",
        markdown_table(
            rows,
            {
                "method": "method",
                "setting": "setting",
                **{i: i for i in labels},
                "diff": "OSRM-family − lora",
            },
        ),  # fmt: skip
        "",
        f"Best merged model: `{b['method']}` ({b['hp'] or 'defaults'}) on `{b['init']}` "
        f"adapters, {100 * b['score']['mean']:.1f} % of the individual adapters' scores. "
        f"{v['advice']}",
        "",
    ]


def task_lines(tasks: Mapping[str, Mapping]) -> list[str]:
    """Per task: the majority class's score beside each setting's zero-shot and individual
    scores, and how many tasks each setting learns beyond the majority class."""
    if not tasks:
        return []
    labels = list(dict.fromkeys(k for cells in tasks.values() for k in cells if k != "majority"))
    rows, above = [], dict.fromkeys(labels, 0)
    for task, cells in tasks.items():
        m = cells["majority"]
        row = {"task": task, "metric": m["metric"], "majority": f"{m['score']:.3f} ({m['label']})"}
        for label in labels:
            cell = cells.get(label, {})
            row[f"{label} zero-shot"] = ms(cell.get("base"))
            row[f"{label} individual"] = ms(cell.get("individual"))
            ind = cell.get("individual")
            above[label] += bool(ind) and ind["mean"] - ind.get("spread", 0) > m["score"] + 0.05
        rows.append(row)
    columns = {"task": "task", "metric": "metric", "majority": "majority class"}
    for label in labels:
        columns |= {f"{label} zero-shot": f"{label} zero-shot",
                    f"{label} individual": f"{label} individual"}  # fmt: skip
    counts = ", ".join(f"{label} {n} of {len(tasks)}" for label, n in above.items())
    return [
        "Per task (test examples as scored by the runs; `majority class`: always answering the "
        "train split's most frequent label):",
        "",
        markdown_table(rows, columns),
        "",
        f"Tasks learnt beyond the majority class (individual mean − spread above it by more than "
        f"0.05): {counts}.",
        "",
    ]
