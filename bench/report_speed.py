"""docs/RESULTS.md (bench/report.py): the speed section, one table of ratios over the speed
benchmarks."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from osrm.report import markdown_table
from report_common import BAD_DATA, Inputs, log, not_run, stamp


def speed_row(
    bench: str,
    what: str,
    base: str,
    measured: str,
    ratio: float | None,
    meaning: str,
    notes: str = "",
) -> dict[str, object]:
    """One row of the speed table."""
    return {
        "bench": bench,
        "what": what,
        "base": base,
        "measured": measured,
        "ratio": ratio,
        "meaning": meaning,
        "notes": notes,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is not positive."""
    return a / b if a is not None and b is not None and b > 0 else None


def stats_overhead_rows(d: Mapping) -> list[dict[str, object]]:
    """Statistics collection vs a plain forward pass (target ratio ≤ 1.15)."""
    target, r = d.get("target_ratio", 1.15), ratio(d["stats_s"], d["forward_s"])
    met = "met" if r is not None and r <= target else "missed"
    return [
        speed_row(
            "stats_overhead",
            "statistics collection vs plain no-grad forward",
            f"forward {d['forward_s']:.3f} s",
            f"statistics {d['stats_s']:.3f} s",
            r,
            f"overhead (target ≤ {target}: {met})",
            f"{d.get('examples', '?')} examples, {d.get('tokens', '?')} tokens",
        )
    ]


def train_speed_rows(d: Mapping) -> list[dict[str, object]]:
    """Dynamic padding vs padding every batch to max length; the interference penalty's cost."""
    fixed, dyn = d["max_length_s_per_step"], d["dynamic_s_per_step"]
    rows = [
        speed_row(
            "train_speed",
            "training step, dynamic padding vs padding to max length",
            f"pad to {d.get('max_length', '?')}: {fixed:.3f} s/step",
            f"dynamic: {dyn:.3f} s/step",
            ratio(fixed, dyn),
            "speed-up",
            f"{d.get('steps', '?')} steps, median of {d.get('repeats', '?')}",
        )
    ]
    if "penalty_s_per_step" in d:  # runs before train.interference_penalty have no such row
        rows.append(
            speed_row(
                "train_speed",
                "training step with train.interference_penalty vs without (dynamic padding)",
                f"without: {dyn:.3f} s/step",
                f"with: {d['penalty_s_per_step']:.3f} s/step",
                ratio(d["penalty_s_per_step"], dyn),
                "cost (x)",
                "closed form from (d, d) moments, same run",
            )
        )
    return rows


def fmt_num(x: float | None, spec: str) -> str:
    """``x`` formatted, or ``n/a``."""
    return "n/a" if x is None else format(x, spec)


def merge_speed_rows(d: Mapping) -> list[dict[str, object]]:
    """Per osrm method with a peft counterpart: time (cold, warm) and memory ratios."""
    return [r for row in d["rows"] if row.get("peft") for r in merge_pair_rows(row)]


def merge_pair_rows(row: Mapping) -> list[dict[str, object]]:
    """osrm vs peft for one merge_speed row: cold vs total time, warm vs merge, peak memory."""
    o, p = row["osrm"], row["peft"]
    what = f"{row['method']} vs peft {row['peft_type']}"
    errs = (
        f"rel err osrm {fmt_num(o.get('rel_err'), '.2g')}, peft {fmt_num(p.get('rel_err'), '.2g')}"
    )
    out = [
        speed_row(
            "merge_speed",
            what + ": time, cold vs total",
            f"peft total {p['total_seconds']:.2f} s",
            f"osrm cold {o['cold_seconds']:.2f} s",
            ratio(p["total_seconds"], o["cold_seconds"]),
            "speed-up",
            errs,
        )
    ]
    if o.get("warm_seconds"):
        out.append(
            speed_row(
                "merge_speed",
                what + ": time, warm vs merge only",
                f"peft merge {p['seconds']:.2f} s",
                f"osrm warm {o['warm_seconds']:.2f} s",
                ratio(p["seconds"], o["warm_seconds"]),
                "speed-up",
            )
        )
    out.append(
        speed_row(
            "merge_speed",
            what + ": peak memory",
            f"peft total {p['total_peak_mib']:.0f} MiB",
            f"osrm {o['peak_mib']:.0f} MiB",
            ratio(o["peak_mib"], p["total_peak_mib"]),
            "memory fraction",
        )
    )
    return out


def dist_stats_rows(d: Mapping) -> list[dict[str, object]]:
    """Statistics in 2 processes vs 1 (same 2 cores), and how far the two results differ."""
    return [
        speed_row(
            "dist_stats",
            "statistics, 2 processes × 1 thread vs 1 process × 2",
            f"1 process {d['one_process_s']:.3f} s",
            f"2 processes {d['two_processes_s']:.3f} s",
            d["speedup"],
            "speed-up",
            f"max relative difference {d['max_relative_difference']:.1e}",
        )
    ]


SPEED_ROWS: dict[str, Callable[[Mapping], list[dict[str, object]]]] = {
    "stats_overhead": stats_overhead_rows,
    "train_speed": train_speed_rows,
    "merge_speed": merge_speed_rows,
    "dist_stats": dist_stats_rows,
}
SPEED_COLUMNS = {
    "bench": "benchmark",
    "what": "comparison",
    "base": "baseline",
    "measured": "measured",
    "ratio": "ratio",
    "meaning": "ratio means",
    "notes": "notes",
}


def speed_body(inputs: Inputs) -> list[str]:
    """One table of ratios over the speed benchmarks, then their stamps (or why not run)."""
    rows: list[dict[str, object]] = []
    notes = []
    for name, make in SPEED_ROWS.items():
        data = inputs.load(name)
        if data is None:
            notes.append(f"- {name}: {not_run(inputs, name)}")
            continue
        try:
            rows += make(data)
        except BAD_DATA as e:
            log.warning("%s: %s: %s", name, type(e).__name__, e)
            notes.append(f"- {name}: *could not summarise*: {type(e).__name__}: {e}.")
        notes.append(f"- {name}: {stamp(inputs, name, data)}")
    table = [markdown_table(rows, SPEED_COLUMNS, floatfmt=".2f"), ""] if rows else []
    return [*table, *notes, ""]
