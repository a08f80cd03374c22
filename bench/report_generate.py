"""docs/RESULTS.md (bench/report.py): "Generative tasks on a decoder" (bench/generate.py):
zero-shot, individual and merged scores of SmolLM2 adapters that answer from prompts (no heads),
per init, with the verdict's comparison of each method pooled over seeds."""

from __future__ import annotations

from collections.abc import Mapping

from osrm.report import markdown_table
from report_common import NO_NORM, Inputs, mean_spread, shown, stamp


def ms(stat: Mapping | None) -> str:
    if stat and stat.get("n", 0) <= 1:
        return f"{stat['mean']:.3f}"
    return mean_spread(stat)


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
