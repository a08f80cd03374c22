"""Aggregation and figures of bench/budget.py: the runs' result rows and budget diagnostics, pooled
over seeds (mean and population spread) per setting and training step, the headline table and the
goal check of issue 15."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from osrm.config import load_config  # noqa: E402
from osrm.report import hp_string, read_results, results_table  # noqa: E402
from osrm.stages.evaluation import merge_grid  # noqa: E402

HEADLINE = ("task_arithmetic", "ties", "dare_ties", "regmean")
DIAGNOSTICS = ("interference", "drift_deg", "own_energy", "other_energy")
GOAL_POINTS, SINGLE_POINTS = 0.02, 0.005  # issue 15: +2 points merged, single-task within 0.5


def stats(values: Iterable[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "spread": spread, "n": len(values)}


def without_seed(hp: str) -> str:
    """DARE's drop seed follows the run's seed; the same setting must pool over seeds."""
    return ",".join(p for p in hp.split(",") if p and not p.startswith("seed="))


def job_rows(job: Mapping, tasks: Sequence[str], steps: int) -> list[dict]:
    """One run's table rows, labelled with the job's setting; final adapters count at ``steps``."""
    run_dir = Path(job["run_dir"])
    # only the settings of the run's config as it stands (a grid changed between two launches
    # leaves rows of settings no other run has; they would not pool over seeds)
    grid = {(m, hp_string(hp)) for m, hp in merge_grid(load_config(run_dir / "config.yaml"))}
    results = [r for r in read_results(run_dir / "results.jsonl")
               if r.kind != "merged" or (r.method, r.hp) in grid]  # fmt: skip
    rows = results_table(results, tasks)
    # a job's own init takes its label (osrm -> osrm+sub); retrofitted series keep their name
    return [{**r, "label": job["label"] if r["init"] == job["init"] else r["init"],
             "seed": job["seed"], "step": r.get("step") or steps, "hp": without_seed(r["hp"])}
            for r in rows]  # fmt: skip


def job_diagnostics(job: Mapping, steps: int) -> list[dict]:
    """The run's budget_diagnostics.json rows (empty when the run predates them)."""
    path = Path(job["run_dir"]) / "budget_diagnostics.json"
    if not path.is_file():
        return []
    rows = json.loads(path.read_text())["rows"]
    return [{**r, "label": job["label"], "seed": job["seed"], "step": r["step"] or 0} for r in rows]


def pool(rows: Sequence[Mapping], keys: Sequence[str], columns: Sequence[str]) -> list[dict]:
    """Mean and spread over seeds of ``columns`` for every distinct ``keys``."""
    groups: dict[tuple, list[Mapping]] = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(k) for k in keys)].append(r)
    return [{**dict(zip(keys, key, strict=True)), **{c: stats(g.get(c) for g in group)
             for c in columns}} for key, group in groups.items()]  # fmt: skip


def headline(merged: Sequence[Mapping], single: Sequence[Mapping], diag: Sequence[Mapping]):
    """Per setting and step: single-task average, each method's setting with the best mean
    normalised average over seeds (the λ of task arithmetic chosen once for all seeds), and the
    diagnostics."""
    out = []
    for s in single:
        row = {"label": s["label"], "step": s["step"], "individual": s["avg"]}
        for method in HEADLINE:
            cands = [m for m in merged if (m["label"], m["step"], m["method"]) ==
                     (s["label"], s["step"], method) and m["norm_avg"]]  # fmt: skip
            # the given weights' grid, and (issue 16) weights from the statistics
            for key, auto in ((method, False), (f"{method}+auto", True)):
                pick = [m for m in cands if ("weights=auto" in m["hp"]) == auto]
                best = max(pick, key=lambda m: m["norm_avg"]["mean"], default=None)
                if best:
                    row[key] = {"hp": best["hp"], "norm_avg": best["norm_avg"], "avg": best["avg"]}
            at_one = [m for m in cands if m["hp"] == "scale=1.0,weights=auto"]
            if at_one:  # auto weights with no search at all
                m = at_one[0]
                row[f"{method}+auto@1"] = {
                    "hp": m["hp"],
                    "norm_avg": m["norm_avg"],
                    "avg": m["avg"],
                }
        d = next((d for d in diag if (d["label"], d["step"]) == (s["label"], s["step"])), {})
        row.update({k: d.get(k) for k in DIAGNOSTICS})
        out.append(row)
    return sorted(out, key=lambda r: (r["label"], r["step"]))


def goal(rows: Sequence[Mapping], reference: str = "lora") -> dict:
    """Per setting: does it beat ``reference`` by GOAL_POINTS normalised average at every step for
    TA and TIES, by more than the two seed spreads added, with the single-task average no more than
    SINGLE_POINTS below?"""
    ref = {r["step"]: r for r in rows if r["label"] == reference}
    out = {}
    trained = [r["label"] for r in rows if r["label"] != reference and "+rf" not in r["label"]]
    for label in dict.fromkeys(trained):
        checks = []
        for r in (r for r in rows if r["label"] == label and r["step"] in ref):
            base = ref[r["step"]]
            single = r["individual"]["mean"] - base["individual"]["mean"]
            for method in ("task_arithmetic", "ties"):
                a, b = r[method]["norm_avg"], base[method]["norm_avg"]
                diff, spread = a["mean"] - b["mean"], a["spread"] + b["spread"]
                met = diff >= GOAL_POINTS and diff > spread and single >= -SINGLE_POINTS
                checks.append({"step": r["step"], "method": method, "diff": diff,
                               "spread": spread, "single_diff": single, "met": met})  # fmt: skip
        out[label] = {"met": bool(checks) and all(c["met"] for c in checks), "checks": checks}
    return out


def retrofit_goal(rows: Sequence[Mapping], trained: str = "osrm") -> dict:
    """Issue 16 per retrofitted series: its normalised merged average minus ``trained``'s (TA and
    TIES, every step; the goal: >= 0) and its single-task average minus the adapters it was made
    from (the goal: within 0.01)."""
    at = {(r["label"], r["step"]): r for r in rows}
    out = {}
    for label in dict.fromkeys(r["label"] for r in rows if "+rf" in r["label"]):
        source, checks = label.split("+rf")[0], []
        for r in (r for r in rows if r["label"] == label):
            other, base = at.get((trained, r["step"])), at.get((source, r["step"]))
            if not other or not base:
                continue
            single = r["individual"]["mean"] - base["individual"]["mean"]
            for method in ("task_arithmetic", "ties"):
                diff = r[method]["norm_avg"]["mean"] - other[method]["norm_avg"]["mean"]
                met = diff >= 0 and abs(single) <= 0.01
                checks.append({"step": r["step"], "method": method, "diff": diff,
                               "single_diff": single, "met": met})  # fmt: skip
        out[label] = {"met": bool(checks) and all(c["met"] for c in checks), "checks": checks}
    return out


def auto_gap(rows: Sequence[Mapping], merged: Sequence[Mapping]) -> list[dict]:
    """Issue 16 per setting and step: task arithmetic with auto weights at scale 1 (no search)
    against its best grid scale with the given weights and against scale 1: normalised average
    differences (the goal: within 0.01 of the best grid λ)."""
    out = []
    for r in rows:
        auto, best = r.get("task_arithmetic+auto@1"), r.get("task_arithmetic")
        if auto and best:
            a, g = auto["norm_avg"]["mean"], best["norm_avg"]["mean"]
            one = next((m["norm_avg"]["mean"] for m in merged if m["norm_avg"] and
                        (m["label"], m["step"], m["method"], m["hp"]) ==
                        (r["label"], r["step"], "task_arithmetic", "scale=1.0")), None)  # fmt: skip
            out.append({"label": r["label"], "step": r["step"], "auto": a, "best_grid": g,
                        "best_hp": best["hp"], "gap": a - g, "scale_one": one,
                        "gap_one": None if one is None else a - one})  # fmt: skip
    return out


def summarise(
    name: str, limits: Mapping, jobs: Sequence[Mapping], seconds: float, common: Sequence[str]
) -> dict:
    """The benchmark's JSON from the finished jobs (``common``: the overrides every run shares)."""
    tasks, steps = limits["tasks"].split(","), limits["steps"]
    rows = [r for j in jobs for r in job_rows(j, tasks, steps)]
    diag = [d for j in jobs for d in job_diagnostics(j, steps)]
    cols = [*tasks, "avg", "norm_avg"]
    keys = ["label", "step", "method", "hp"]
    merged = pool([r for r in rows if r["model"] == "merged"], keys, cols)
    single = pool([r for r in rows if r["model"] == "individual"], ["label", "step"], cols)
    diag_pooled = pool(diag, ["label", "step"], ["drift_max_deg", *DIAGNOSTICS])
    table = headline(merged, single, diag_pooled)
    return {
        "benchmark": "budget", "variant": name, "config": "configs/offline-suite.yaml",
        "overrides": [*common, *limits["overrides"]], "seeds": limits["seeds"],
        "finished_seeds": sorted({j["seed"] for j in jobs}), "limits": dict(limits), "tasks": tasks,
        "budgets": [*limits["checkpoints"], steps], "jobs": list(jobs), "merged": merged,
        "single": single, "diagnostics": diag_pooled, "headline": table, "goal": goal(table),
        "retrofit_goal": retrofit_goal(table), "auto_gap": auto_gap(table, merged),
        "wall_seconds": seconds, "job_seconds": sum(j["seconds"] for j in jobs),
    }  # fmt: skip


def best_family_init(result: Mapping, family: Sequence[str]) -> str:
    """The init of ``family`` with the best mean of its TA and TIES normalised averages at the
    largest budget."""
    last = max(result["budgets"])

    def score(label: str) -> float:
        row = next(r for r in result["headline"] if (r["label"], r["step"]) == (label, last))
        return statistics.fmean(row[m]["norm_avg"]["mean"] for m in ("task_arithmetic", "ties"))

    return max(family, key=score)


def _curve(ax, rows: Sequence[Mapping], value, title: str, ylabel: str) -> None:
    for label in dict.fromkeys(r["label"] for r in rows):
        # step 0 (the init: drift 0, no interference) has no place on a log axis
        points = [(r["step"], value(r)) for r in rows
                  if r["label"] == label and r["step"] > 0 and value(r)]  # fmt: skip
        if points:
            x, y = zip(*sorted(points), strict=True)
            ax.errorbar(x, [p["mean"] for p in y], yerr=[p["spread"] for p in y], marker="o",
                        capsize=3, label=label)  # fmt: skip
    steps = sorted({r["step"] for r in rows if r["step"] > 0})
    ax.set(xscale="log", xlabel="training steps", ylabel=ylabel, title=title)
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.minorticks_off()
    ax.grid(alpha=0.3)


def plot(result: Mapping, prefix: Path) -> list[Path]:
    """Merged normalised and absolute averages (TA, TIES) and the diagnostics vs steps."""
    table, paths = result["headline"], []
    panels = {
        "merged": [(lambda r, m=m, k=k: (r.get(m) or {}).get(k), f"{m}: {k}", k)
                   for m in ("task_arithmetic", "ties") for k in ("norm_avg", "avg")],
        "diagnostics": [(lambda r, k=k: r.get(k), k, k) for k in DIAGNOSTICS],
    }  # fmt: skip
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for name, specs in panels.items():
        fig, axes = plt.subplots(2, 2, figsize=(11, 8), layout="constrained")
        for ax, (value, title, ylabel) in zip(axes.flat, specs, strict=True):
            _curve(ax, table, value, title, ylabel)
        axes.flat[0].legend(fontsize=8)
        fig.suptitle(f"budget study ({result['variant']}): mean ± spread over seeds")
        path = Path(f"{prefix}-{name}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
