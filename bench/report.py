"""Write docs/RESULTS.md from the raw benchmark JSON in bench/results/ (bench/all.py runs this).

    python bench/report.py                          # bench/results/ -> docs/RESULTS.md
    python bench/report.py --results DIR --out FILE

Every number in the document is computed here from the JSON files, nothing is typed in by hand. A
benchmark whose file is missing or unreadable gets one line saying so (with its exit status from
index.json when known) instead of its section. `bench/interpretation.md`, when it exists (beside
the results folder), is copied verbatim under "Discussion". The document is written atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from osrm.atomic import atomic_file
from osrm.report import markdown_table, read_results, results_table, table_columns

REPO = Path(__file__).parents[1]
RESULTS = REPO / "bench" / "results"
OUT = REPO / "docs" / "RESULTS.md"
FIGURES = "results"  # folder of the quality figures, relative to docs/RESULTS.md
BASELINE = "lora"  # the init every other init is compared with
HEADLINE = ("task_arithmetic", "ties")  # methods whose per-task merged scores are shown
ROBUSTNESS = "task_arithmetic"  # the method whose scale grid measures robustness
VERSIONS = ("torch", "transformers", "peft")
# column order of the merge methods (after HEADLINE): the order of bench/quality.py's grid
METHOD_ORDER = ("weight_average", "task_arithmetic", "ties", "dare_linear", "dare_ties",
                "magnitude_prune", "breadcrumbs", "knots", "tsv", "regmean")  # fmt: skip
PLACES = 3  # decimals shown; differences are compared as shown
POOLED_NOTE = (
    " Settings that differ only by `seed=` (the random-drop methods take the run's seed) are "
    "pooled over seeds."
)
NO_NORM_WHY = "It needs a positive individual score on every task (see the single-task scores)."
NO_NORM = f"No merged result with a normalised average. {NO_NORM_WHY}"
# a malformed result file is reported in its section instead of stopping the whole document
BAD_DATA = (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError)

log = logging.getLogger("bench.report")

Row = Mapping[str, object]
Stat = Mapping[str, float]  # {"mean", "spread", "n"}: one score aggregated over seeds


@dataclass
class Inputs:
    """The results folder and its index.json (``{}`` when there is none)."""

    results: Path
    index: dict = field(default_factory=dict)

    def load(self, name: str) -> dict | None:
        """``<results>/<name>.json``, or None when it is missing or not valid JSON."""
        return read_json(self.results / f"{name}.json")

    def run(self, name: str) -> dict:
        """index.json's stamp of one benchmark run (``{}`` when it has none)."""
        return self.index.get("runs", {}).get(name) or {}


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``; None (with a warning if it exists) when it cannot be read."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.warning("%s: unreadable (%s); reported as not run", path, e)
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------- formatting


def mean_spread(stat: Stat | None) -> str:
    """``0.812 ± 0.010`` (mean ± spread over seeds); blank for a missing score."""
    return "" if not stat else f"{stat['mean']:.3f} ± {stat['spread']:.3f}"


def duration(seconds: float | None) -> str:
    """``4812 s (1.3 h)``; minutes or hours are added when they read better."""
    if seconds is None:
        return "not recorded"
    if seconds >= 3600:
        return f"{seconds:.0f} s ({seconds / 3600:.1f} h)"
    if seconds >= 120:
        return f"{seconds:.0f} s ({seconds / 60:.1f} min)"
    return f"{seconds:.1f} s"


def plural(n: int, noun: str) -> str:
    """``1 task``, ``8 tasks``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def code_list(items: Sequence[object]) -> str:
    """Items as Markdown code spans separated by spaces (verbatim, e.g. config overrides)."""
    return " ".join(f"`{item}`" for item in items)


def not_run(inputs: Inputs, name: str) -> str:
    """The line that replaces the section of a benchmark without a usable result file.

    Args:
        inputs: the results folder and index.
        name: the benchmark's result name (``quality``, ``merge_speed``, ...).

    Returns:
        ``*Not run*: ...`` with the exit status and time of its last run when index.json has one.
    """
    line = f"*Not run*: no usable `{shown(inputs.results / f'{name}.json')}`"
    run = inputs.run(name)
    if "returncode" not in run:
        return line + " and no record of a run in index.json."
    outcome = f"failed with exit status {run['returncode']}" if run["returncode"] else "exited 0"
    return (
        line
        + f"; its last run (`{run.get('command', '?')}`) {outcome}"
        + (f", finished {run['finished']}." if run.get("finished") else ".")
    )


def shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (as in index.json)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def versions(packages: Mapping[str, str]) -> str:
    """``torch 2.4.0, transformers 4.56.0, peft 0.17.0`` (the ones that are known)."""
    known = [f"{p} {packages[p]}" for p in VERSIONS if p in packages]
    return ", ".join(known) or "package versions not recorded"


def seed_list(data: Mapping) -> list:
    """The seeds a result holds: quality's finished seeds, else its seed(s), else the config's."""
    config = data.get("config")
    seeds = data.get("finished_seeds", data.get("seeds", data.get("seed")))
    if seeds is None and isinstance(config, dict):
        seeds = config.get("seed")
    return [] if seeds is None else seeds if isinstance(seeds, list) else [seeds]


def seeds_of(data: Mapping) -> str:
    """``seeds 0, 1`` (``seed 0``), noting planned seeds a stopped run did not reach."""
    seeds = seed_list(data)
    text = ("seeds " if len(seeds) > 1 else "seed ") + ", ".join(map(str, seeds))
    planned = data.get("seeds")
    if isinstance(planned, list) and planned != seeds:
        text += f" (of {', '.join(map(str, planned))} planned: the run stopped early)"
    return text if seeds else ""


def stamp(inputs: Inputs, name: str, data: Mapping) -> str:
    """One line: how a result was made (command, config + overrides, seeds, versions, time).

    Args:
        inputs: the results folder and index (index.json holds command, versions, wall time).
        name: the result name, its key in index.json.
        data: the result itself (config, overrides and seeds live there).

    Returns:
        ``Stamp: command `...` · config `...` + `override` ... · seeds 0, 1 · torch ... · ...``
    """
    run = inputs.run(name)
    parts = [f"command `{run['command']}`" if run.get("command") else "command not recorded"]
    if isinstance(data.get("config"), str):
        overrides = data.get("overrides") or []
        parts.append(
            f"config `{data['config']}`" + (" + " + code_list(overrides) if overrides else "")
        )
    if seeds := seeds_of(data):
        parts.append(seeds)
    parts += machine_load(data)
    env = run.get("environment") or data.get("environment") or {}
    packages = env.get("packages") or log_versions(inputs.results / f"{name}.log")
    parts.append(versions(packages))
    parts.append("wall time " + duration(run.get("wall_seconds", data.get("wall_seconds"))))
    if run.get("finished"):
        parts.append(f"finished {run['finished']}")
    return "Stamp: " + " · ".join(parts) + "."


def machine_load(data: Mapping) -> list[str]:
    """Stamp parts on what the run competed for: device, torch threads, load average."""
    threads = data.get("threads", (data.get("args") or {}).get("threads"))
    load = data.get("load_average")
    return [
        *([f"device {data['device']}"] if data.get("device") else []),
        *([f"{threads} torch threads"] if threads else []),
        *([f"1-min load average {load[0]:.1f} before, {load[1]:.1f} after"] if load else []),
    ]


def log_versions(path: Path) -> dict[str, str]:
    """Versions from a run log's ``torch 2.4.0 transformers 4.56.0 …`` line (bench/gpu.sh)."""
    if not path.is_file():
        return {}
    for line in path.read_text(errors="replace").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "torch" and len(words) % 2 == 0:
            return dict(zip(words[::2], words[1::2], strict=True))
    return {}


def guarded(body: Callable[[], list[str]], what: str) -> list[str]:
    """``body()``; a malformed result becomes one line instead of stopping the whole report."""
    try:
        return body()
    except BAD_DATA as e:
        log.warning("%s: %s: %s", what, type(e).__name__, e)
        return [f"*Could not summarise {what}*: {type(e).__name__}: {e}.", ""]


def section(title: str, body: Callable[[], list[str]], level: int = 2) -> list[str]:
    """A Markdown section: heading, then ``body()`` (guarded), then one blank line."""
    lines = guarded(body, title)
    while lines and not lines[-1]:
        lines = lines[:-1]
    return ["#" * level + " " + title, "", *lines, ""]


# ---------------------------------------------------------------- quality: picking settings


def norm_mean(row: Row) -> float:
    """A quality row's normalised average, mean over seeds."""
    return row["norm_avg"]["mean"]  # type: ignore[index]


def merged_rows(agg: Mapping) -> list[Row]:
    """The merged rows of an aggregate (or a flat table) that have a normalised average."""
    return [r for r in agg["rows"] if r["model"] == "merged" and r.get("norm_avg") is not None]


def methods_of(rows: Sequence[Row]) -> list[str]:
    """Merge methods: the headline ones, the others in METHOD_ORDER, then any unknown ones."""
    order = [*HEADLINE, *METHOD_ORDER]
    found = list(dict.fromkeys(str(r["method"]) for r in rows))
    return sorted(found, key=lambda m: order.index(m) if m in order else len(order))


def best_settings(
    rows: Sequence[Row], score: Callable[[Row], float] = norm_mean
) -> dict[tuple[str, str], Row]:
    """Per (init, method), the row with the highest ``score`` over the method's grid.

    Args:
        rows: merged rows (aggregated over seeds, or flat ones with a ``score``).
        score: what to maximise; by default the mean normalised average over seeds.

    Returns:
        ``{(init, method): row}`` in the order the pairs first appear.
    """
    best: dict[tuple[str, str], Row] = {}
    for r in rows:
        key = (str(r["init"]), str(r["method"]))
        if key not in best or score(r) > score(best[key]):
            best[key] = r
    return best


def without_seed(hp: str) -> str:
    """A hyperparameter string without its ``seed=`` item (``density=0.5,scale=1.0``)."""
    return ",".join(i for i in hp.split(",") if i and i.partition("=")[0] != "seed")


def pool(stats: Sequence[Stat | None]) -> Stat | None:
    """Scores of disjoint groups of seeds as one: overall mean and population std, total n."""
    groups = [s for s in stats if s]
    if len(groups) <= 1:
        return groups[0] if groups else None
    n = sum(s["n"] for s in groups)
    mean = sum(s["n"] * s["mean"] for s in groups) / n
    var = sum(s["n"] * (s["spread"] ** 2 + (s["mean"] - mean) ** 2) for s in groups) / n
    return {"mean": mean, "spread": var**0.5, "n": n}


def pool_seeded(rows: Sequence[Row]) -> list[Row]:
    """Aggregate rows whose settings differ only by ``seed=``, pooled into one row.

    The random-drop methods (dare_*) take the run's seed as a hyperparameter, so bench/quality.py
    aggregates each seed's row on its own (n = 1); here they become one row over all seeds.
    """
    groups: dict[tuple[str, ...], list[Row]] = {}
    for r in rows:
        key = (str(r["init"]), str(r["model"]), str(r["method"]), without_seed(str(r["hp"])))
        groups.setdefault(key, []).append(r)
    out: list[Row] = []
    for (init, model, method, hp), group in groups.items():
        scores = dict.fromkeys(
            k for r in group for k in r if k not in ("init", "model", "method", "hp")
        )
        out.append(
            {
                "init": init,
                "model": model,
                "method": method,
                "hp": hp,
                **{k: pool([r.get(k) for r in group]) for k in scores},
            }
        )  # type: ignore[misc]
    return out


def pooled(data: dict | None) -> dict | None:
    """A quality result with :func:`pool_seeded` applied to its aggregate rows (a copy)."""
    if data is None or not isinstance(data.get("aggregate"), dict):
        return data
    rows = data["aggregate"].get("rows")
    if not isinstance(rows, list):
        return data
    seeded = any("seed=" in str(r.get("hp", "")) for r in rows if isinstance(r, dict))
    aggregate = {**data["aggregate"], "rows": pool_seeded(rows)}
    return {**data, "aggregate": aggregate, "pooled_seed_settings": seeded}


def hp_items(hp: str) -> frozenset[str]:
    """The ``k=v`` items of a hyperparameter string, without ``seed`` (a draw, not a setting)."""
    return frozenset(i for i in hp.split(",") if i and i.partition("=")[0] != "seed")


def fixed_settings(rows: Sequence[Row], fixed: Mapping[str, str]) -> dict[tuple[str, str], Row]:
    """Per (init, method), the row at the method's fixed setting (``fixed``: method -> hp).

    A row matches when its settings equal the fixed string's, ignoring a ``seed=`` item (the
    random-drop methods carry one that the fixed strings may leave out).
    """
    return {
        (str(r["init"]), str(r["method"])): r
        for r in rows
        if r["method"] in fixed and hp_items(str(r["hp"])) == hp_items(fixed[str(r["method"])])
    }


def pick_table(picks: Mapping[tuple[str, str], Row], inits: Sequence[str]) -> str:
    """Init (rows) × method (columns) of ``mean ± spread``; the best init per method in bold."""
    methods = methods_of(list(picks.values()))
    rows: list[dict[str, object]] = [{"init": i} for i in inits]
    for m in methods:
        means = {i: norm_mean(picks[i, m]) for i in inits if (i, m) in picks}
        top = max(means, key=means.__getitem__)
        for row in rows:
            if (row["init"], m) in picks:
                cell = mean_spread(picks[row["init"], m]["norm_avg"])  # type: ignore[arg-type]
                row[m] = f"**{cell}**" if row["init"] == top else cell
    return markdown_table(rows, {"init": "init", **{m: m for m in methods}})


def hp_table(picks: Mapping[tuple[str, str], Row], inits: Sequence[str]) -> str:
    """Init × method of the chosen hyperparameters (``-`` for a method without any)."""
    methods = methods_of(list(picks.values()))
    rows = [
        {"init": i, **{m: picks[i, m]["hp"] or "-" for m in methods if (i, m) in picks}}
        for i in inits
    ]
    return markdown_table(rows, {"init": "init", **{m: m for m in methods}})


def top_pick(picks: Mapping[tuple[str, str], Row], init: str) -> tuple[str, Row] | None:
    """The method (and its row) with the init's highest normalised average, if any."""
    methods = methods_of([r for (i, _), r in picks.items() if i == init])
    mine = [(m, picks[init, m]) for m in methods]  # ties go to the first in column order
    return max(mine, key=lambda mr: norm_mean(mr[1])) if mine else None


# ---------------------------------------------------------------- quality: sections


def setup_line(data: Mapping) -> str:
    """What was trained: model, LoRA rank and targets, tasks, inits, steps (from the config)."""
    cfg = data["runs"][0]["config"]
    lora, train = cfg.get("lora", {}), cfg.get("train", {})
    tasks = data["aggregate"]["tasks"]
    targets = " on " + ", ".join(lora["target_modules"]) if lora.get("target_modules") else ""
    frozen = ""
    if train.get("frozen_a_steps") or train.get("frozen_a_lr"):  # B-only adapters train longer
        frozen = (
            f" (inits with a frozen A: {train.get('frozen_a_steps') or train.get('steps', '?')} "
            f"steps at lr {train.get('frozen_a_lr') or train.get('lr', '?')})"
        )
    return (
        f"Setup: `{cfg.get('model', {}).get('name', '?')}`, LoRA r={lora.get('rank', '?')}"
        f"{targets}, {train.get('steps', '?')} steps at lr "
        f"{train.get('lr', '?')}{frozen}; {plural(len(tasks), 'task')} ({', '.join(tasks)}); "
        f"inits {', '.join(data['aggregate']['inits'])}."
    )


def headline(data: Mapping) -> list[str]:
    """Best-setting normalised merged average per init × method, with the chosen settings."""
    agg = data["aggregate"]
    picks = best_settings(merged_rows(agg))
    if not picks:
        return [NO_NORM, ""]
    return [
        f"Normalised merged average (each task's merged score / the same init's individual "
        f"adapter, averaged over the {plural(len(agg['tasks']), 'task')}; 1.0 = merging lost "
        "nothing), "
        f"mean ± spread (population std) over {seeds_of(data)}, at each method's best setting "
        "for the init (highest mean over its grid). **Bold**: the best init for the method."
        + (POOLED_NOTE if data.get("pooled_seed_settings") else ""),
        "",
        pick_table(picks, agg["inits"]),
        "",
        "The settings chosen:",
        "",
        hp_table(picks, agg["inits"]),
        "",
    ]


def fixed_section(data: Mapping) -> list[str]:
    """The same table at each method's fixed (documented default) setting."""
    fixed = data.get("fixed") or {}
    picks = fixed_settings(merged_rows(data["aggregate"]), fixed)
    if not picks:
        return ["No fixed settings recorded (or none matched a merged result).", ""]
    settings = ", ".join(f"{m} `{hp or '-'}`" for m, hp in fixed.items())
    return [
        f"Normalised merged average at fixed settings (no tuning): {settings}. **Bold**: the "
        "best init for the method.",
        "",
        pick_table(picks, data["aggregate"]["inits"]),
        "",
    ]


def individual_section(data: Mapping) -> list[str]:
    """Single-task scores of the individual adapters per init × task, mean ± spread."""
    agg = data["aggregate"]
    cols = [*agg["tasks"], "avg"]
    rows = [
        {"init": r["init"], **{c: mean_spread(r.get(c)) for c in cols}}
        for r in agg["rows"]
        if r["model"] == "individual"
    ]
    return [
        "Each task's main metric on its test split, one adapter per task (before merging), "
        f"mean ± spread over {seeds_of(data)}.",
        "",
        markdown_table(rows, {"init": "init", **{c: c for c in cols}}),
        "",
    ]


def per_task_section(data: Mapping) -> list[str]:
    """Per-task merged scores (means) at the best setting of the headline methods."""
    agg = data["aggregate"]
    picks = best_settings(merged_rows(agg))
    rows = [
        {
            "init": i,
            "method": m,
            "hp": picks[i, m]["hp"],
            "norm_avg": norm_mean(picks[i, m]),
            **{c: picks[i, m][c]["mean"] for c in [*agg["tasks"], "avg"] if picks[i, m].get(c)},
        }
        for m in HEADLINE
        for i in agg["inits"]
        if (i, m) in picks
    ]
    if not rows:
        return [NO_NORM, ""]
    columns = {
        "init": "init",
        "method": "method",
        "hp": "setting",
        **{t: t for t in agg["tasks"]},
        "avg": "avg",
        "norm_avg": "norm. avg",
    }
    return [
        f"Merged model's score per task (mean over seeds) at the best setting of "
        f"{' and '.join(HEADLINE)} for each init.",
        "",
        markdown_table(rows, columns),
        "",
    ]


def scale_grid(rows: Sequence[Row], method: str = ROBUSTNESS) -> dict[str, dict[str, float]]:
    """Per init, the method's normalised average (mean) at each setting of its grid."""
    grid: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["method"] == method:
            grid.setdefault(str(r["init"]), {})[str(r["hp"])] = norm_mean(r)
    return grid


def grid_spread(curve: Mapping[str, float]) -> float:
    """Max − min of the normalised average over a grid (lower = more robust)."""
    return max(curve.values()) - min(curve.values())


def robustness_section(data: Mapping) -> list[str]:
    """The robustness method's normalised average over its scale grid, and the grid spread."""
    grid = scale_grid(merged_rows(data["aggregate"]))
    if not grid:
        return [f"No {ROBUSTNESS} result with a normalised average. {NO_NORM_WHY}", ""]
    settings = list(dict.fromkeys(hp for curve in grid.values() for hp in curve))
    rows = [{"init": i, **curve, "spread": grid_spread(curve)} for i, curve in grid.items()]
    variant = data.get("variant", "full")
    return [
        f"{ROBUSTNESS}: normalised merged average (mean over seeds) at each setting of its grid; "
        "spread = max − min over the grid (lower = more robust to the merging hyperparameter).",
        "",
        markdown_table(rows, {"init": "init", **{s: s for s in settings}, "spread": "spread"}),
        "",
        f"![{ROBUSTNESS} normalised average vs scale]({FIGURES}/quality-{variant}-scale.png)",
        "",
    ]


def off_diagonal_mean(matrix: Mapping[str, Mapping[str, float]]) -> float | None:
    """Mean over i ≠ j of an interference matrix's ratios (None when there are none)."""
    off = [v for i, row in matrix.items() for j, v in row.items() if i != j]
    return statistics.fmean(off) if off else None


def interference_section(data: Mapping) -> list[str]:
    """Per init, the mean off-diagonal interference ratio, and the heat map."""
    matrices = data["aggregate"]["interference"]
    rows = [{"init": i, "mean": off_diagonal_mean(m)} for i, m in matrices.items()]
    variant = data.get("variant", "full")
    return [
        "Cross-task interference ratio ‖ΔW_j X_tᵀ‖ / ‖ΔW_t X_tᵀ‖ (how strongly task j's adapter "
        "responds to task t's inputs, relative to t's own adapter), mean over task pairs j ≠ t "
        "(lower = adapters disturb each other less).",
        "",
        markdown_table(rows, {"init": "init", "mean": "mean off-diagonal ratio"}),
        "",
        f"![interference heat map]({FIGURES}/quality-{variant}-interference.png)",
        "",
    ]


SUBSPACE_KEYS = {
    "other": "other tasks' energy",
    "own": "own task's energy",
    "other_random": "other tasks' energy, random A",
    "overlap": "overlap",
}


def subspace_section(data: Mapping) -> list[str]:
    """Per subspace mode, the mean over tasks of the captured energy fractions and overlap."""
    run = data["runs"][0]
    rows = [
        {"mode": mode, **{k: statistics.fmean(t[k] for t in per_task) for k in SUBSPACE_KEYS}}
        for mode, per_task in run["subspace"].items()
        if per_task
    ]
    return [
        f"Seed {run.get('seed', '?')}: fraction of the other tasks' (and the task's own) input "
        "covariance energy captured by each task's OSRM A (per mode), against a random "
        "orthonormal A, and the subspace overlap between tasks; mean over tasks.",
        "",
        markdown_table(rows, {"mode": "mode", **SUBSPACE_KEYS}),
        "",
    ]


QUALITY_PARTS: dict[str, Callable[[Mapping], list[str]]] = {
    "Fixed settings": fixed_section,
    "Single-task scores (individual adapters)": individual_section,
    "Merged scores per task": per_task_section,
    "Robustness to the merging scale λ": robustness_section,
    "Interference": interference_section,
    "Subspace diagnostics": subspace_section,
}


def quality_body(inputs: Inputs, data: dict | None, gpu: dict | None) -> list[str]:
    """The quality section: stamp, headline (CPU, then GPU if present), the other tables."""
    if data is None:
        return [not_run(inputs, "quality"), ""]
    lines = [stamp(inputs, "quality", data), "", *guarded(lambda: [setup_line(data), ""], "setup")]
    lines += section("Best setting per method", lambda: headline(data), level=3)
    if gpu is not None:
        title = "Best setting per method, GPU run"
        lines += section(title, lambda: [stamp(inputs, "quality-gpu", gpu), "", *headline(gpu)], 3)
    for title, part in QUALITY_PARTS.items():
        lines += section(title, lambda part=part: part(data), level=3)
    return lines


def quick_body(inputs: Inputs, data: dict) -> list[str]:
    """The quick variant's stamp and headline only."""
    return [stamp(inputs, "quality-quick", data), "", *headline(data)]


# ---------------------------------------------------------------- decoder, single task


def decoder_body(inputs: Inputs, data: dict) -> list[str]:
    """Per init: the individual average and each method's best normalised average (decoder)."""
    rows = data["rows"]
    picks = best_settings(merged_rows(data), score=lambda r: r["norm_avg"])  # type: ignore
    methods = methods_of(list(picks.values()))
    individual = {r["init"]: r.get("avg") for r in rows if r["model"] == "individual"}
    interference = data.get("interference") or {}
    table = [
        {
            "init": i,
            "individual": individual.get(i),
            "interference": off_diagonal_mean(interference[i]) if i in interference else None,
            **{
                m: f"{picks[i, m]['norm_avg']:.3f} ({picks[i, m]['hp'] or '-'})"
                for m in methods
                if (i, m) in picks
            },
        }
        for i in dict.fromkeys(r["init"] for r in rows)
    ]
    columns = {
        "init": "init",
        "individual": "individual avg",
        **{m: m for m in methods},
        "interference": "mean interference",
    }
    return [
        stamp(inputs, "decoder", data),
        "",
        f"Tasks: {', '.join(data.get('tasks', []))}. Individual avg = mean single-task score of "
        "the init's own adapters; per method, the best normalised merged average over its grid "
        "(setting in parentheses); mean interference = mean off-diagonal ratio.",
        "",
        markdown_table(table, columns),
        "",
    ]


def gpu_run(results: Path) -> dict | None:
    """``<results>/gpu/``'s ``osrm run`` output (bench/gpu.sh) in decoder_body's shape."""
    folder = results / "gpu"
    found = read_results(folder / "results.jsonl")
    if not found:
        return None
    tasks = list(dict.fromkeys(r.task for r in found))
    log = (folder / "run.log").read_text() if (folder / "run.log").is_file() else ""
    exit_line = next((ln for ln in reversed(log.splitlines()) if ln.startswith("exit ")), "")
    means = re.search(r"mean cross-task interference ratio: (.*)", log)
    interference = dict(re.findall(r"(\w+) ([0-9.]+)", means.group(1))) if means else {}
    return {"tasks": tasks, "rows": results_table(found, tasks), "exit": exit_line,
            "interference_means": {k: float(v) for k, v in interference.items()}}  # fmt: skip


def gpu_body(results: Path, data: dict) -> list[str]:
    """The GPU run: how it was made, then its full results table."""
    lines = [
        "Stamp: command `bash bench/gpu.sh` (after `bash bench/gpu_bundle.sh`) on one NVIDIA H200; "
        f"versions and caveats in `{shown(results / 'gpu' / 'README.md')}` · {data['exit']}.",
        "",
        "Larger limits than the CPU suite (300 steps at lr 1e-3, length 128, 256 statistics "
        "examples, ≤ 500 test examples), but one seed, two inits and three methods: the full CPU "
        "grid at these limits did not finish its first seed in the 500 s the GPU could be held.",
        "",
        markdown_table(data["rows"], table_columns(data["tasks"])),
        "",
    ]
    if data["interference_means"]:
        means = ", ".join(f"{k} {v:.3f}" for k, v in data["interference_means"].items())
        lines += [f"Mean cross-task interference ratio: {means}.", ""]
    return lines


def single_task_body(inputs: Inputs, data: dict, name: str = "single_task") -> list[str]:
    """The single-task benchmark's table: per task, each init's test score (and their mean)."""
    rows = data["rows"]
    inits = [k for k in rows[0] if k not in ("task", "metric")]
    train = data.get("config", {}).get("train", {})
    evals = data.get("config", {}).get("eval", {}).get("max_eval_examples", "?")
    return [
        stamp(inputs, name, data),
        "",
        f"Test score of each task's main metric, one adapter per task and init, "
        f"{train.get('steps', '?')} steps at lr {train.get('lr', '?')}, ≤ {evals} test examples.",
        "",
        markdown_table(rows, {"task": "task", "metric": "metric", **{i: i for i in inits}}),
        "",
    ]


# ---------------------------------------------------------------- speed


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
    """Dynamic padding vs padding every batch to max length."""
    fixed, dyn = d["max_length_s_per_step"], d["dynamic_s_per_step"]
    return [
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


# ---------------------------------------------------------------- interpretation


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


# ---------------------------------------------------------------- header, limits, main


def environment_line(runs: Mapping[str, Mapping]) -> str:
    """Commit(s), Python, machine and package versions of the recorded runs."""
    envs = [r["environment"] for r in runs.values() if r.get("environment")]
    if not envs:
        return "Environment: not recorded."
    env = envs[-1]
    commits = list(dict.fromkeys(e.get("commit", "?") for e in envs))
    dirty = " (with uncommitted changes)" if any(e.get("dirty") for e in envs) else ""
    packages = ", ".join(f"{p} {v}" for p, v in env.get("packages", {}).items())
    return (
        f"Environment: commit {', '.join(commits)}{dirty}; Python {env.get('python', '?')} on "
        f"{env.get('machine', '?')} with {env.get('cpus', '?')} CPUs; {packages}."
    )


def header(inputs: Inputs) -> list[str]:
    """Title, how the document is made and regenerated, the suite's time and environment."""
    lines = [
        "# Benchmark results",
        "",
        "Generated by `make bench` (`python bench/all.py`), which runs every benchmark in "
        "`bench/` and writes its raw JSON to `bench/results/`; every number below is computed "
        "from those files by `bench/report.py`. To regenerate only this document from the "
        "existing results: `python bench/report.py`. Do not edit it by hand.",
        "",
    ]
    if not inputs.index:
        return [*lines, "No `index.json` in the results: no run of the suite is recorded.", ""]
    suite, runs = inputs.index.get("suite") or {}, inputs.index.get("runs") or {}
    if suite:
        failed = ", ".join(suite.get("failed") or []) or "none"
        lines.append(
            f"- Suite: `{suite.get('command', '?')}` ran {', '.join(suite.get('names', []))} in "
            f"{duration(suite.get('wall_seconds'))}; failed: {failed}."
        )
    else:
        lines.append(
            "- Suite: no complete run of `bench/all.py` recorded (single benchmarks only)."
        )
    for part in inputs.index.get("partial") or []:
        failed = ", ".join(part.get("failed") or []) or "none"
        lines.append(
            f"- Later partial run: `{part.get('command', '?')}` ran "
            f"{', '.join(part.get('names', []))} in {duration(part.get('wall_seconds'))}; "
            f"failed: {failed}."
        )
    lines += current_suite_time(suite, runs, inputs.index.get("partial") or [])
    finished = max((r["finished"] for r in runs.values() if r.get("finished")), default=None)
    lines.append(f"- Last benchmark finished: {finished or 'not recorded'}.")
    return [*lines, f"- {environment_line(runs)}", ""]


def current_suite_time(suite: dict, runs: dict, partial: list[dict]) -> list[str]:
    """When full-size benchmarks were re-run after the suite, what the suite costs now: the sum
    of the latest stamp of each of its benchmarks (the gaps between them are not counted)."""
    rerun = [p for p in partial if "--quick" not in p.get("command", "")]
    names = suite.get("names") or []
    seconds = [runs.get(n, {}).get("wall_seconds") for n in names]
    if not rerun or not names or None in seconds:
        return []
    redone = sorted({n for p in rerun for n in p.get("names", []) if n in names})
    return [
        f"- Suite time after the re-runs: {duration(sum(seconds))}, the sum of the latest run of "
        f"each benchmark ({', '.join(redone)} re-run after the suite)."
    ]


def limits_body(inputs: Inputs) -> list[str]:
    """The overrides each quality variant ran with, verbatim (the limits of these results)."""
    lines = []
    for name in ("quality", "quality-quick", "quality-gpu"):
        data = inputs.load(name) or (inputs.load("quality-full") if name == "quality" else None)
        if data is None:
            continue
        lines += [f"`{name}` ({seeds_of(data)}), config `{data.get('config', '?')}` with:", ""]
        lines += [f"- `{o}`" for o in data.get("overrides") or []] + [""]
    return lines or ["No quality results: no limits to list.", ""]


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
    quality = pooled(inputs.load("quality") or inputs.load("quality-full"))
    gpu, quick = pooled(inputs.load("quality-gpu")), pooled(inputs.load("quality-quick"))
    lines = header(inputs)
    lines += section("Quality: merging real adapters", lambda: quality_body(inputs, quality, gpu))
    if quick is not None:
        lines += section("Quality, quick variant", lambda: quick_body(inputs, quick))
    if (gpu_data := gpu_run(results)) is not None:
        lines += section("Quality on one GPU", lambda: gpu_body(results, gpu_data))
    lines += section("Decoder (SmolLM2-135M)", lambda: optional(inputs, "decoder", decoder_body))
    lines += section(
        "Single-task benchmark", lambda: optional(inputs, "single_task", single_task_body)
    )
    if (single_quick := inputs.load("single_task-quick")) is not None:
        body = lambda: single_task_body(inputs, single_quick, "single_task-quick")  # noqa: E731
        lines += section("Single-task benchmark, quick variant", body)
    lines += section("Speed", lambda: speed_body(inputs))
    lines += section("Interpretation", lambda: interpretation_body(inputs, quality))
    lines += section("Limits", lambda: limits_body(inputs))
    return "\n".join(lines).rstrip() + "\n"


def write(text: str, out: Path) -> None:
    """Write ``text`` to ``out`` atomically (a temporary sibling, then ``os.replace``)."""
    with atomic_file(out) as tmp:
        tmp.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--results DIR`` (default bench/results) ``--out FILE`` (docs/RESULTS.md)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON results")
    parser.add_argument("--out", type=Path, default=OUT, help="the Markdown file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="report: %(message)s")
    write(build(args.results), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
