"""The verdict a report opens with, computed from the results table (never written by hand).

From the final adapters' merged rows of one or more runs (several runs: seeds of one
experiment, pooled as mean ± population spread): the best merged model, the OSRM-family inits
against ``lora`` per method at its best setting and at its fixed setting (the method's default
hyperparameters, no search), and one line of advice that follows from those numbers.
"""

from __future__ import annotations

import html as _html
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from osrm.inits import INITS
from osrm.merging.registry import METHODS
from osrm.report import parse_hp

REFERENCE = "lora"  # what the OSRM family is compared with
RETROFIT_MARK = "+rf"  # retrofitted series: <init>+rf<μ> (osrm.stages.retrofitting)


@dataclass(frozen=True)
class Score:
    """A normalised merged average over seeds: mean, population spread, number of seeds."""

    mean: float
    spread: float
    n: int

    def text(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f}" + (f" ± {self.spread:.{digits}f}" if self.n > 1 else "")


@dataclass(frozen=True)
class Cell:
    """One init's score for one method at one setting choice (``hp``: the setting used)."""

    score: Score
    hp: str


def osrm_family(init: str) -> bool:
    """Inits whose A comes from the statistics: an OSRM subspace mode (with any option, as in
    ``osrm+sub``), or a retrofitted series."""
    base = init.split("+")[0]
    return RETROFIT_MARK in init or (base in INITS and INITS[base].mode is not None)


def is_default(method: str, hp: str) -> bool:
    """Whether ``hp`` is ``method``'s default setting (the draw seed aside; given weights)."""
    defaults = {k: h.default for k, h in METHODS[method].hyperparameters.items()}
    for key, value in parse_hp(hp).items():
        if key == "seed":
            continue
        if key not in defaults or not _same(value, defaults[key]):
            return False  # weights=auto is a choice of its own, not the default
    return True


def _same(text: str, default: object) -> bool:
    try:
        return float(text) == float(default)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return text == str(default)


def _without_seed(hp: str) -> str:
    # DARE's draw follows the run's seed: the same setting in every seed's run
    return ",".join(p for p in hp.split(",") if p and not p.startswith("seed="))


def pooled(runs: Sequence[Sequence[Mapping]]) -> dict[tuple[str, str, str], Score]:
    """(init, method, hp) -> normalised average over the runs, from each run's final merged rows
    (results-table rows without ``step``); a setting counts only where every run has it."""
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for rows in runs:
        for r in rows:
            if r["model"] == "merged" and "step" not in r and r.get("norm_avg") is not None:
                values[(r["init"], r["method"], _without_seed(r["hp"]))].append(r["norm_avg"])
    out = {}
    for key, v in values.items():
        if len(v) == len(runs):
            spread = statistics.pstdev(v) if len(v) > 1 else 0.0
            out[key] = Score(statistics.fmean(v), spread, len(v))
    return out


def compare(scores: Mapping[tuple[str, str, str], Score]) -> list[dict]:
    """Per method and setting choice (``best``: the highest mean over its grid; ``fixed``: its
    default setting, when the grid has it): init -> :class:`Cell`."""
    inits = list(dict.fromkeys(k[0] for k in scores))
    out = []
    for method in dict.fromkeys(k[1] for k in scores):
        for choice in ("best", "fixed"):
            cells = {}
            for init in inits:
                pick = [(hp, s) for (i, m, hp), s in scores.items() if (i, m) == (init, method)]
                if choice == "fixed":
                    pick = [(hp, s) for hp, s in pick if is_default(method, hp)]
                if pick:
                    hp, s = max(pick, key=lambda p: p[1].mean)
                    cells[init] = Cell(s, hp)
            if cells:
                out.append({"method": method, "choice": choice, "cells": cells})
    return out


def _beats(a: Score, b: Score) -> bool:
    """``a`` above ``b`` by more than the two seed spreads added (one seed: by any margin)."""
    return a.mean - b.mean > a.spread + b.spread


def verdict(runs: Sequence[Sequence[Mapping]]) -> dict | None:
    """The verdict of one experiment's runs (each a results table; several: its seeds).

    Returns None when no run has a scored merge. Otherwise ``best`` (init, method, hp, score),
    ``rows`` (from :func:`compare`, each with ``family_minus_lora``: the best OSRM-family mean
    minus lora's, None without both), ``wins``/``losses`` (best settings where the family's best
    beats lora beyond the spread, or lora beats it), ``seeds`` and ``advice`` (one line).
    """
    scores = pooled(runs)
    if not scores:
        return None
    (init, method, hp), best = max(scores.items(), key=lambda kv: kv[1].mean)
    rows = compare(scores)
    wins = losses = compared = 0
    for row in rows:
        cells = row["cells"]
        family = [c for i, c in cells.items() if osrm_family(i)]
        top = max(family, key=lambda c: c.score.mean, default=None)
        ref = cells.get(REFERENCE)
        row["family_minus_lora"] = top.score.mean - ref.score.mean if top and ref else None
        if top and ref and row["choice"] == "best":
            compared += 1
            wins += _beats(top.score, ref.score)
            losses += _beats(ref.score, top.score)
    out = {"best": {"init": init, "method": method, "hp": hp, "score": best}, "rows": rows,
           "wins": wins, "losses": losses, "compared": compared, "seeds": len(runs)}  # fmt: skip
    out["advice"] = advice(out)
    return out


def advice(v: Mapping) -> str:
    """One line that follows from the verdict's numbers."""
    b = v["best"]
    use = f"merge with `{b['method']}` ({b['hp'] or 'defaults'}) on `{b['init']}` adapters"
    kept = f"it keeps {100 * b['score'].mean:.1f} % of the individual adapters' scores"
    noise = "" if v["seeds"] > 1 else " (one seed: no spread to tell noise from effect)"
    if not v["compared"]:
        return f"Use the best setting found: {use}; {kept}."
    tally = (
        f"the OSRM-family inits beat `{REFERENCE}` for {v['wins']} of {v['compared']} methods "
        f"at their best settings and lose for {v['losses']}{noise}"
    )
    if v["wins"] > v["compared"] / 2 and osrm_family(b["init"]):
        return f"Train OSRM-style: {tally}; {use}, {kept}."
    return f"OSRM-family inits do not reliably merge better here: {tally}; {use}, {kept}."


def markdown(v: Mapping) -> list[str]:
    """The verdict as Markdown lines: best model, the comparison table (best cell of each row in
    bold), the advice."""
    b = v["best"]
    inits = list(dict.fromkeys(i for row in v["rows"] for i in row["cells"]))
    seeds = f", mean ± spread over {v['seeds']} seeds" if v["seeds"] > 1 else ""
    lines = [
        "## Verdict",
        "",
        f"**Best merged model:** `{b['method']}` ({b['hp'] or 'defaults'}) on `{b['init']}` "
        f"adapters keeps **{100 * b['score'].mean:.1f} %** of the individual adapters' scores "
        f"(normalised average {b['score'].text()}{seeds}).",
        "",
        f"Normalised merged average per method: `best` is the method's best setting in the grid, "
        f"`fixed` its default hyperparameters (no search){seeds}; bold: the best init of the row.",
        "",
        "| method | setting | " + " | ".join(inits) + " | OSRM-family − lora |",
        "|---|---|" + "---|" * (len(inits) + 1),
    ]
    for row in v["rows"]:
        lines.append(f"| {row['method']} | {row['choice']} | " + " | ".join(
            cell_text(row["cells"], i) for i in inits) + f" | {_points(row)} |")  # fmt: skip
    return [*lines, "", f"**Advice:** {v['advice']}"]


def cell_text(cells: Mapping[str, Cell], init: str) -> str:
    """One cell: the score and its setting; the row's best in bold."""
    if init not in cells:
        return ""
    cell, top = cells[init], max(c.score.mean for c in cells.values())
    text = f"{cell.score.text()} ({cell.hp or 'defaults'})"
    return f"**{text}**" if cell.score.mean == top else text


def _points(row: Mapping) -> str:
    d = row.get("family_minus_lora")
    return "" if d is None else f"{100 * d:+.1f} pts"


def html(v: Mapping | None) -> str:
    """The verdict as a report.html section (empty without a verdict); best cells highlighted."""
    if v is None:
        return ""
    b, inits = v["best"], list(dict.fromkeys(i for row in v["rows"] for i in row["cells"]))
    esc = _html.escape
    head = "".join(
        f"<th>{esc(h)}</th>" for h in ["method", "setting", *inits, "OSRM-family − lora"]
    )

    def cell(cells: Mapping[str, Cell], init: str) -> str:
        text = cell_text(cells, init)
        bold = text.startswith("**")
        return f"<td{' class=best' if bold else ''}>{esc(text.strip('*'))}</td>"

    body = "".join(
        f"<tr><td>{esc(r['method'])}</td><td>{r['choice']}</td>"
        + "".join(cell(r["cells"], i) for i in inits)
        + f"<td>{_points(r)}</td></tr>"
        for r in v["rows"]
    )
    return (
        f"<h2>Verdict</h2><p><b>Best merged model:</b> {esc(b['method'])} "
        f"({esc(b['hp'] or 'defaults')}) on {esc(b['init'])} adapters keeps "
        f"<b>{100 * b['score'].mean:.1f} %</b> of the individual adapters' scores.</p>"
        "<p>Normalised merged average per method: best = the method's best setting in the grid, "
        "fixed = its default hyperparameters (no search); highlighted: the best init of the "
        f"row.</p><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        f"<p><b>Advice:</b> {esc(v['advice'].replace('`', ''))}</p>"
    )
