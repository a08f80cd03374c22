"""docs/RESULTS.md (bench/report.py): the interpretation, sentences generated from the numbers
for each claim, then the hand-written discussion."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from report_common import (
    BASELINE,
    NO_NORM_WHY,
    PLACES,
    ROBUSTNESS,
    Inputs,
    Row,
    Stat,
    guarded,
    mean_spread,
    section,
    seed_list,
    seeds_of,
)
from report_picks import best_settings, fixed_settings, merged_rows, norm_mean, top_pick
from report_quality import grid_spread, scale_grid


def difference(a: Stat, b: Stat) -> tuple[str, str]:
    """How ``a`` compares with ``b``, worded by the sign of the difference.

    Args:
        a: a score as mean and spread over seeds.
        b: the score it is compared with.

    Returns:
        (``above``/``below``/``equal to``, ``" by 0.012, within the seed spread"``): within when
        the difference is at most the larger of the two spreads.
    """
    d = round(a["mean"] - b["mean"], PLACES)
    if d == 0:
        return f"equal (to {PLACES} decimals) to", ""
    where = "within" if within_spread(d, a, b) else "beyond"
    return ("above" if d > 0 else "below"), f" by {abs(d):.3f}, {where} the seed spread"


def within_spread(d: float, *stats: Stat) -> bool:
    """Whether a difference is at most the larger spread, both as shown (3 decimals)."""
    return round(abs(d), PLACES) <= round(max(s.get("spread", 0.0) for s in stats), PLACES)


def wins(picks: Mapping[tuple[str, str], Row], init: str) -> tuple[int, int]:
    """(methods where ``init`` beats the baseline, methods both have) at the picked settings."""
    both = [m for (i, m) in picks if i == init and (BASELINE, m) in picks]
    return sum(norm_mean(picks[init, m]) > norm_mean(picks[BASELINE, m]) for m in both), len(both)


def merged_sentence(agg: Mapping, fixed: Mapping[str, str], init: str) -> str:
    """The init's best normalised average against the baseline's, and its method wins."""
    rows = merged_rows(agg)
    picks = best_settings(rows)
    ours, theirs = top_pick(picks, init), top_pick(picks, BASELINE)
    if ours is None or theirs is None:
        return f"{init}: no merged results to compare with {BASELINE}."
    word, tail = difference(ours[1]["norm_avg"], theirs[1]["norm_avg"])  # type: ignore[arg-type]
    k, n = wins(picks, init)
    kf, nf = wins(fixed_settings(rows, fixed), init)
    return (
        f"{init}'s best normalised average ({mean_spread(ours[1]['norm_avg'])}, {ours[0]}) "  # type: ignore[arg-type]
        f"is {word} {BASELINE}'s ({mean_spread(theirs[1]['norm_avg'])}, {theirs[0]}){tail}; "  # type: ignore[arg-type]
        f"{init} is higher for {k} of {n} methods at their best setting and {kf} of {nf} at "
        "the fixed settings."
    )


def one_seed_note(data: Mapping) -> list[str]:
    """A warning that differences cannot be weighed against seed noise with one seed."""
    if len(seed_list(data)) > 1:
        return []
    return [
        "With a single seed there is no seed spread: no difference below is tested against "
        "seed-to-seed noise.",
        "",
    ]


def claim_merged(data: Mapping) -> list[str]:
    """(a): does an init merge better than the baseline? One sentence per init."""
    agg = data["aggregate"]
    if BASELINE not in agg["inits"]:
        return [f"No {BASELINE} baseline in the quality run: nothing to compare with.", ""]
    fixed = data.get("fixed") or {}
    others = [i for i in agg["inits"] if i != BASELINE]
    return [
        *one_seed_note(data),
        *(f"- {merged_sentence(agg, fixed, init)}" for init in others),
        "",
    ]


def individual_stats(agg: Mapping) -> dict[str, Row]:
    """Per init, its individual-adapter row (per-task and avg scores over seeds)."""
    return {str(r["init"]): r for r in agg["rows"] if r["model"] == "individual"}


def largest_gap(scores: Mapping[str, Stat], base: Mapping[str, Stat], tasks: Sequence[str]) -> str:
    """The task where ``scores`` differ most from ``base``: ``-0.031 on trec (…)``."""
    gaps = {t: scores[t]["mean"] - base[t]["mean"] for t in tasks if scores.get(t) and base.get(t)}
    if not gaps:
        return "no common task"
    task = max(gaps, key=lambda t: abs(gaps[t]))
    where = "within" if within_spread(gaps[task], scores[task], base[task]) else "beyond"
    return f"{gaps[task]:+.3f} on {task} ({where} the seed spread)"


def parity_quality(data: Mapping) -> list[str]:
    """(b) from the quality run: mean single-task score per init and the largest gap."""
    agg = data["aggregate"]
    ind = individual_stats(agg)
    means = ", ".join(f"{i} {mean_spread(r['avg'])}" for i, r in ind.items())  # type: ignore[arg-type]
    lines = [f"- Quality run, mean single-task score per init (individual adapters): {means}."]
    base = ind.get(BASELINE)
    for init, r in ind.items():
        if base is not None and init != BASELINE:
            word, tail = difference(r["avg"], base["avg"])  # type: ignore[arg-type]
            gap = largest_gap(r, base, agg["tasks"])  # type: ignore[arg-type]
            lines.append(
                f"- {init}: mean single-task score {word} {BASELINE}'s{tail}; largest per-task "
                f"gap to {BASELINE} {gap}."
            )
    return lines


def parity_single_task(data: Mapping) -> list[str]:
    """(b) from the single-task benchmark (one seed): mean score per init, largest gap."""
    rows = [r for r in data["rows"] if r["task"] != "mean"]
    inits = [k for k in rows[0] if k not in ("task", "metric")]
    by_init = {i: {r["task"]: {"mean": r[i], "spread": 0.0} for r in rows} for i in inits}
    means = ", ".join(f"{i} {statistics.fmean(r[i] for r in rows):.3f}" for i in inits)
    lines = [f"- Single-task benchmark ({seeds_of(data)}), mean score per init: {means}."]
    if BASELINE in by_init:
        tasks = [r["task"] for r in rows]
        gaps = [
            f"{i} {largest_gap(s, by_init[BASELINE], tasks).split(' (')[0]}"
            for i, s in by_init.items()
            if i != BASELINE
        ]
        lines.append(f"- Largest per-task gap to {BASELINE} there: " + "; ".join(gaps) + ".")
    return lines


def claim_parity(inputs: Inputs, quality: Mapping | None) -> list[str]:
    """(b): are single-task scores on par with the baseline?"""
    lines = guarded(lambda: parity_quality(quality), "quality") if quality else []
    single = inputs.load("single_task")
    lines += guarded(lambda: parity_single_task(single), "single_task") if single else []
    return [*(lines or ["No single-task results."]), ""]


def spread_sentence(ours: float, theirs: float) -> str:
    """``spread smaller than lora's by 0.031`` (by the sign of the difference)."""
    d = round(ours - theirs, PLACES)
    if d == 0:
        return f"spread equal (to {PLACES} decimals) to {BASELINE}'s"
    return f"spread {'smaller' if d < 0 else 'larger'} than {BASELINE}'s by {abs(d):.3f}"


def claim_robustness(data: Mapping) -> list[str]:
    """(c): how much the robustness method's score moves over its scale grid, per init."""
    grid = scale_grid(merged_rows(data["aggregate"]))
    if not grid:
        return [f"No {ROBUSTNESS} result with a normalised average. {NO_NORM_WHY}", ""]
    spreads = {i: grid_spread(c) for i, c in grid.items()}
    settings = len({hp for curve in grid.values() for hp in curve})
    floors = ", ".join(
        f"{i} {min(c.values()):.3f} ({min(c, key=c.__getitem__)})" for i, c in grid.items()
    )
    lines = [
        f"- Spread of {ROBUSTNESS}'s normalised average over its grid ({settings} "
        "settings; max − min of the seed means, lower = more robust): "
        + ", ".join(f"{i} {s:.3f}" for i, s in spreads.items())
        + ".",
        f"- Lowest normalised average over the grid: {floors}.",
    ]
    if BASELINE in spreads:
        for init, s in spreads.items():
            if init != BASELINE:
                lines.append(f"- {init}: {spread_sentence(s, spreads[BASELINE])}.")
    return [*lines, ""]


def interpretation_body(inputs: Inputs, quality: Mapping | None) -> list[str]:
    """The three claims, each in sentences generated from the numbers, then the discussion."""
    missing = ["Quality benchmark not run: no numbers to interpret.", ""]
    lines = section(
        "(a) Merged performance", lambda: claim_merged(quality) if quality else missing, 3
    )
    lines += section("(b) Single-task parity", lambda: claim_parity(inputs, quality), 3)
    lines += section(
        "(c) Robustness to the merging hyperparameter",
        lambda: claim_robustness(quality) if quality else missing,
        3,
    )
    discussion = inputs.results.parent / "interpretation.md"
    if discussion.is_file():
        lines += ["### Discussion", "", discussion.read_text().rstrip(), ""]
    return lines
