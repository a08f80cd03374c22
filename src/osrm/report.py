"""Result tables as Markdown (what the CLI prints and the reports embed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def _cell(value: object, floatfmt: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, floatfmt)
    return str(value)


def markdown_table(
    rows: Sequence[Mapping[str, object]], columns: Mapping[str, str], floatfmt: str = ".3f"
) -> str:
    """A Markdown table of ``rows`` with ``columns`` (key -> header); missing cells are blank."""
    header = "| " + " | ".join(columns.values()) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(r.get(k), floatfmt) for k in columns) + " |" for r in rows]
    return "\n".join([header, rule, *body])
