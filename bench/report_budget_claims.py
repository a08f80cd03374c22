"""docs/RESULTS.md (bench/report.py): the claims of "Does it hold with training?", computed from
the budget study's headline rows (``budget.json``): every trained setting against `lora` per
budget, then one paragraph per claim (merged quality, single-task cost, interference, drift of A).
Nothing here is typed in by hand; the words follow the signs and sizes of the differences."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from scipy.stats import spearmanr

from osrm.report import markdown_table
from report_common import BASELINE

MERGES = ("task_arithmetic", "ties")
ALPHA = 0.05  # a rank correlation is called a relation below this p-value


def _trained(rows: Sequence[Mapping]) -> list[str]:
    """The settings trained by the study other than ``lora`` (retrofits are post-hoc)."""
    return list(dict.fromkeys(r["label"] for r in rows
                              if r["label"] != BASELINE and "+rf" not in r["label"]))  # fmt: skip


def _at(rows: Sequence[Mapping]) -> dict[tuple[str, int], Mapping]:
    return {(r["label"], r["step"]): r for r in rows}


def difference(
    row: Mapping, ref: Mapping, method: str, key: str = "norm_avg"
) -> tuple[float, bool] | None:
    """``row`` − ``ref`` merged average (``key``: normalised or absolute) of ``method`` and whether
    it is beyond the two seed spreads added; None when either lacks it."""
    a, b = (row.get(method) or {}).get(key), (ref.get(method) or {}).get(key)
    if not a or not b:
        return None
    diff = a["mean"] - b["mean"]
    return diff, abs(diff) > a["spread"] + b["spread"]


def _points(d: tuple[float, bool] | None) -> str:
    return "" if d is None else f"{100 * d[0]:+.1f}" + (" *" if d[1] else "")


def versus_table(rows: Sequence[Mapping]) -> str:
    """Per trained setting and budget: its difference from `lora` (points) in merged TA and TIES,
    single-task average and interference."""
    at, table = _at(rows), []
    for label in _trained(rows):
        for step in sorted({r["step"] for r in rows if r["label"] == label}):
            row, ref = at[label, step], at.get((BASELINE, step))
            if ref is None:
                continue
            single = 100 * (row["individual"]["mean"] - ref["individual"]["mean"])
            inter = [(x.get("interference") or {}).get("mean") for x in (row, ref)]
            table.append({
                "label": label, "step": step,
                **{m: _points(difference(row, ref, m)) for m in MERGES},
                **{f"{m} abs": _points(difference(row, ref, m, "avg")) for m in MERGES},
                "single": f"{single:+.1f}",
                "inter": "" if None in inter else f"{inter[0] - inter[1]:+.3f}",
            })  # fmt: skip
    columns = {"label": "setting", "step": "steps", "task_arithmetic": "TA (pts)",
               "ties": "TIES (pts)", "task_arithmetic abs": "TA absolute (pts)",
               "ties abs": "TIES absolute (pts)", "single": "single-task (pts)",
               "inter": "interference"}  # fmt: skip
    return markdown_table(table, columns)


def _cells(rows: Sequence[Mapping], label: str, key: str = "norm_avg") -> dict:
    """(step, method) -> ``label`` − `lora` (see :func:`difference`) where both were measured."""
    at = _at(rows)
    return {(s, m): d for s in sorted({r["step"] for r in rows}) for m in MERGES
            if (label, s) in at and (BASELINE, s) in at
            and (d := difference(at[label, s], at[BASELINE, s], m, key)) is not None}  # fmt: skip


def _where(cells: Sequence[tuple[int, str]]) -> str:
    names = {"task_arithmetic": "TA", "ties": "TIES"}
    return ", ".join(f"{names[m]} at {s}" for s, m in cells) or "none"


def merged_claim(rows: Sequence[Mapping]) -> str:
    """Does an OSRM-family setting merge better than `lora`, at the largest budget and at all?"""
    last = max(r["step"] for r in rows)
    wins, every, tally, absolute = [], [], [], []
    for label in _trained(rows):
        ds = _cells(rows, label)
        ahead = [k for k, (d, beyond) in ds.items() if beyond and d > 0]
        behind = [k for k, (d, beyond) in ds.items() if beyond and d < 0]
        wins += [label] if all((last, m) in ahead for m in MERGES) else []
        every += [label] if ds and len(ahead) == len(ds) else []
        tally.append(
            f"`{label}` is ahead in {len(ahead)} of {len(ds)} (method, budget) cells "
            f"({_where(ahead)}) and behind in {len(behind)} ({_where(behind)})"
        )
        final = [_cells(rows, label, "avg").get((last, m)) for m in MERGES]
        if None not in final:
            absolute.append(f"`{label}` " + " / ".join(_points(d) for d in final))
    first = (f"At the largest budget ({last} steps), "
             + (f"{', '.join(f'`{x}`' for x in wins)} merge{'s' if len(wins) == 1 else ''} "
                f"better than `{BASELINE}`" if wins else
                f"no OSRM-family setting merges better than `{BASELINE}`")
             + " beyond the seed spread for both task arithmetic and TIES; "
             + (f"{', '.join(f'`{x}`' for x in every)} at every budget." if every else
                "none does so at every budget."))  # fmt: skip
    tail = (f" In absolute merged average at {last} steps (points against `{BASELINE}`, TA / "
            f"TIES): {', '.join(absolute)}." if absolute else "")  # fmt: skip
    return (f"**Merged quality.** {first} Beyond the seed spread, {'; '.join(tally)}.{tail} "
            "(Normalised averages; per budget in the table above.)")  # fmt: skip


def single_claim(rows: Sequence[Mapping]) -> str:
    """How far each setting's single-task average is from `lora`'s at the largest budget."""
    at, last = _at(rows), max(r["step"] for r in rows)
    parts = []
    for label in _trained(rows):
        if (label, last) in at and (BASELINE, last) in at:
            d = at[label, last]["individual"]["mean"] - at[BASELINE, last]["individual"]["mean"]
            parts.append(f"`{label}` {100 * d:+.1f}")
    return (f"**Single-task scores.** At {last} steps, single-task averages against "
            f"`{BASELINE}` (points): {', '.join(parts)}. A setting that merges better while its "
            "own adapters score lower has traded task quality for merge quality; the normalised "
            "average hides that, the absolute table shows it.")  # fmt: skip


def interference_claim(rows: Sequence[Mapping]) -> str:
    """Does lower interference go with a better merge? Rank correlation over settings × budgets."""
    trained = {BASELINE, *_trained(rows)}
    pairs = [
        (r["interference"]["mean"], r["task_arithmetic"]["norm_avg"]["mean"])
        for r in rows
        if r["label"] in trained
        and r.get("interference")
        and (r.get("task_arithmetic") or {}).get("norm_avg")
    ]
    if len(pairs) < 3:
        return "**Interference.** Too few settings with interference to compare."
    rho, p = spearmanr(*zip(*pairs, strict=True))
    if p >= ALPHA:
        how = "interference and merge quality show no clear relation"
    else:
        how = f"lower interference goes with a {'better' if rho < 0 else 'worse'} merge"
    return (f"**Interference.** Across the {len(pairs)} trained settings × budgets, {how} "
            f"(Spearman ρ = {rho:+.2f} between interference and the task-arithmetic normalised "
            f"merged average, p = {p:.2f}; settings pooled over seeds).")  # fmt: skip


def drift_claim(rows: Sequence[Mapping]) -> str:
    """How far A leaves its initial row space, per setting, first and last budget."""
    steps = sorted({r["step"] for r in rows})
    at, parts = _at(rows), []
    for label in [BASELINE, *_trained(rows)]:
        ds = [(at.get((label, s)) or {}).get("drift_deg") for s in (steps[0], steps[-1])]
        if None not in ds:
            parts.append(f"`{label}` {ds[0]['mean']:.0f}° → {ds[1]['mean']:.0f}°")
    if not parts:
        return "**Drift of A.** Not measured."
    return (f"**Drift of A.** Mean principal angle between A's row space and its initial one, at "
            f"{steps[0]} → {steps[-1]} steps: {', '.join(parts)}. 0° means A kept its initial "
            "subspace; 90° would be a subspace orthogonal to it.")  # fmt: skip


def claim_lines(rows: Sequence[Mapping]) -> list[str]:
    """The table against `lora` and one paragraph per claim."""
    if not any(r["label"] == BASELINE for r in rows) or not _trained(rows):
        return []
    return [
        f"Every trained setting against `{BASELINE}` at the same budget (differences of means; "
        "* = beyond the two seed spreads added; merged columns at each method's best setting):",
        "",
        versus_table(rows),
        "",
        merged_claim(rows),
        "",
        single_claim(rows),
        "",
        interference_claim(rows),
        "",
        drift_claim(rows),
        "",
    ]
