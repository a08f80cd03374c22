"""docs/RESULTS.md (bench/report.py): "Merging eight 8B-shaped adapters"
(bench/merge_speed_llm.py): time and peak memory of osrm's streamed dense and exact LoRA merges
and of peft's ``add_weighted_adapter``, at 32 and 16 layers, with the ratios that say whether
memory follows the model or its largest module."""

from __future__ import annotations

from osrm.report import markdown_table
from report_common import Inputs, shown, stamp

OUTPUTS = {
    "osrm-dense": "osrm dense (streamed checkpoint)",
    "osrm-lora": "osrm LoRA (exact concatenation, rank 128)",
    "peft-cat": "peft add_weighted_adapter cat",
}


def llm_merge_body(inputs: Inputs, data: dict) -> list[str]:
    """The section's lines from ``merge_speed_llm.json``."""
    gib = 2**30
    rows = [{"layers": r["layers"], "output": label, "seconds": f"{r[k]['seconds']:.1f}",
             "peak": f"{r[k]['peak_mib']:.0f}", "written": f"{r[k]['written_bytes'] / gib:.2f}",
             "base": f"{r['base_bytes'] / gib:.1f}", "adapters": f"{r['adapter_bytes'] / gib:.2f}"}
            for r in data["rows"] for k, label in OUTPUTS.items()]  # fmt: skip
    lines = [
        stamp(inputs, "merge_speed_llm", data),
        "",
        f"{data['adapters']} random rank-{data['rank']} adapters on "
        f"{', '.join(data['targets'])} of a synthetic Llama-3-8B-shaped bf16 checkpoint (hidden "
        f"{data['shape']['hidden']}, intermediate {data['shape']['intermediate']}, vocab "
        f"{data['shape']['vocab']}), task arithmetic with weights 1/{data['adapters']}; each "
        "measurement in a fresh process, one thread; peak = resident-set high-water mark above "
        "the start of the measured section. peft's adapters load onto a base whose weights are "
        "allocated but never touched (a real base would add its size); peft has no streamed "
        f"dense output. Raw: `{shown(inputs.results / 'merge_speed_llm.json')}`.",
        "",
        markdown_table(
            rows,
            {
                "layers": "layers",
                "output": "output",
                "seconds": "seconds",
                "peak": "peak MiB",
                "written": "written GiB",
                "base": "base GiB",
                "adapters": "adapters GiB",
            },
        ),  # fmt: skip
        "",
    ]
    by_layers = {r["layers"]: r for r in data["rows"]}
    if len(by_layers) >= 2:
        big, small = max(by_layers), min(by_layers)
        ratios = ", ".join(
            f"{k} {by_layers[big][k]['peak_mib'] / by_layers[small][k]['peak_mib']:.2f}"
            for k in OUTPUTS
        )
        lines += [f"Peak memory at {big} layers ÷ at {small} layers (2.00 = grows with the "
                  f"model, 1.00 = with the largest module): {ratios}.", ""]  # fmt: skip
    r = by_layers[max(by_layers)]
    lines += [
        f"At {r['layers']} layers: osrm's LoRA merge peaks at "
        f"{r['osrm-lora']['peak_mib'] / r['peft-cat']['peak_mib']:.2f}× peft's memory in "
        f"{r['osrm-lora']['seconds'] / r['peft-cat']['seconds']:.2f}× its time; the dense merge "
        f"writes {r['osrm-dense']['written_bytes'] / gib:.1f} GiB with a peak of "
        f"{r['osrm-dense']['peak_mib'] / 1024:.2f} GiB, "
        f"{100 * r['osrm-dense']['peak_mib'] * 2**20 / r['base_bytes']:.1f} % of the base "
        "model's size (which a merge in memory, such as peft's merge_and_unload, holds at least). "
        "A LoRA output is held whole before it is written, so its peak follows its own size "
        "(written GiB), which grows with the layers.",
        "",
    ]
    return lines
