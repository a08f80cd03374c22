"""docs/RESULTS.md (bench/report.py): shared constants, reading the results, formatting and
stamps (how each result was made), and Markdown sections that survive malformed data."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import common

REPO, RESULTS = common.REPO, common.RESULTS
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


def ms(stat: Stat | None) -> str:
    """mean ± spread over seeds; the mean alone for one seed (a spread of 0 would mislead)."""
    if stat and stat.get("n", 0) <= 1:
        return f"{stat['mean']:.3f}"
    return mean_spread(stat)


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
    command = run.get("command") or data.get("command")  # a script run alone records its own
    parts = [f"command `{command}`" if command else "command not recorded"]
    if isinstance(data.get("config"), str):
        overrides = data.get("overrides") or []
        parts.append(
            f"config `{data['config']}`" + (" + " + code_list(overrides) if overrides else "")
        )
    if seeds := seeds_of(data):
        parts.append(seeds)
    parts += machine_load(data)
    env = run.get("environment") or data.get("environment") or {}
    parts.append(versions(env.get("packages") or {}))
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
