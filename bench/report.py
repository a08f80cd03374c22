"""Write docs/RESULTS.md from the raw benchmark JSON in bench/results/ (bench/all.py runs this).

    python bench/report.py                          # bench/results/ -> docs/RESULTS.md
    python bench/report.py --results DIR --out FILE

Every number in the document is computed here from the JSON files, nothing is typed in by hand. A
benchmark whose file is missing or unreadable gets one line saying so (with its exit status from
index.json when known) instead of its section. `bench/interpretation.md`, when it exists (beside
the results folder), is copied verbatim under "Discussion". The document is written atomically.
The sections are made by the `report_*.py` modules beside this script (one per part of the
document); this one puts them in order and writes the file.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import common
from osrm.artifacts import atomic_file
from report_add_task import add_task_body
from report_budget import budget_body
from report_claims import interpretation_body
from report_common import OUT, RESULTS, Inputs, not_run, read_json, section
from report_generate import generate_body
from report_header import header, limits_body
from report_llm_merge import llm_merge_body
from report_picks import pooled
from report_quality import quality_body, quick_body
from report_retrofit import retrofit_body
from report_runs import decoder_body, gpu_body, gpu_run, single_task_body
from report_speed import speed_body


def optional(inputs: Inputs, name: str, body: Callable[[Inputs, dict], list[str]]) -> list[str]:
    """``body(inputs, data)`` for the result ``name``, or the line saying it was not run."""
    data = inputs.load(name)
    return [not_run(inputs, name), ""] if data is None else body(inputs, data)


def build(results: Path) -> str:
    """The whole document for the result files in ``results``.

    Args:
        results: the folder of ``<benchmark>.json`` files and ``index.json``; a
            ``interpretation.md`` beside it (in its parent) becomes the Discussion.

    Returns:
        The Markdown text. Missing or malformed results give lines saying so, never an error.
    """
    inputs = Inputs(results, read_json(results / "index.json") or {})
    quality = pooled(inputs.load("quality"))
    quick = pooled(inputs.load("quality-quick"))
    lines = header(inputs)
    lines += section("Quality: merging real adapters", lambda: quality_body(inputs, quality))
    if quick is not None:
        lines += section("Quality, quick variant", lambda: quick_body(inputs, quick))
    if (gpu_data := gpu_run(results)) is not None:
        lines += section("Quality on one GPU", lambda: gpu_body(results, gpu_data))
    lines += section("Does it hold with training?", lambda: optional(inputs, "budget", budget_body))
    if (budget_quick := inputs.load("budget-quick")) is not None:
        body = lambda: budget_body(inputs, budget_quick)  # noqa: E731
        lines += section("Does it hold with training? Quick variant", body)
    for name in ("retrofit", "retrofit-quick"):
        if (data := inputs.load(name)) is not None:
            title = "Merge-ready without retraining" + ("" if name == "retrofit" else ", quick")
            lines += section(title, lambda data=data: retrofit_body(inputs, data))
    for name in ("add_task", "add_task-quick"):
        if (data := inputs.load(name)) is not None:
            title = "Adding a task later" + ("" if name == "add_task" else ", quick")
            lines += section(title, lambda data=data: add_task_body(inputs, data))
    lines += section("Decoder (SmolLM2-135M)", lambda: optional(inputs, "decoder", decoder_body))
    for name in ("generate", "generate-quick"):
        if (data := inputs.load(name)) is not None:
            title = "Generative tasks on a decoder (no heads)" + ("" if name == "generate"
                                                                   else ", quick")  # fmt: skip
            lines += section(title, lambda data=data: generate_body(inputs, data))
    lines += section(
        "Single-task benchmark", lambda: optional(inputs, "single_task", single_task_body)
    )
    if (single_quick := inputs.load("single_task-quick")) is not None:
        body = lambda: single_task_body(inputs, single_quick, "single_task-quick")  # noqa: E731
        lines += section("Single-task benchmark, quick variant", body)
    lines += section("Speed", lambda: speed_body(inputs))
    if (llm := inputs.load("merge_speed_llm")) is not None:
        lines += section("Merging eight 8B-shaped adapters", lambda: llm_merge_body(inputs, llm))
    lines += section("Interpretation", lambda: interpretation_body(inputs, quality))
    lines += section("Limits", lambda: limits_body(inputs))
    return "\n".join(lines).rstrip() + "\n"


def write(text: str, out: Path) -> None:
    """Write ``text`` to ``out`` atomically (a temporary sibling, then ``os.replace``)."""
    with atomic_file(out) as tmp:
        tmp.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--results DIR`` (default bench/results) ``--out FILE`` (docs/RESULTS.md)."""
    parser = common.new_parser(__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON results")
    parser.add_argument("--out", type=Path, default=OUT, help="the Markdown file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="report: %(message)s")
    write(build(args.results), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
