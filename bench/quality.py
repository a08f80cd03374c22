"""Benchmark: does OSRM make LoRA adapters merge better? Real weights, real data, several seeds.

Runs `osrm run` on configs/offline-suite.yaml (all-MiniLM-L6-v2, r=8, query+value, 8 offline
tasks: vitaminc is left out because no init learns it in these limits, inits lora / osrm /
osrm_mean / contrast / contrast_frozen, every merge method) once per seed with the limits below
(contrast_frozen trains only B, so it gets 3x the steps and 3x the lr to keep up with the
others' single-task scores), then aggregates over seeds (mean and spread) into
`bench/results/quality-full.json` (or --json; `make bench` writes quality.json) and figures
under `docs/results/`. `bench/report.py` turns the JSON into docs/RESULTS.md.

    python bench/quality.py            # about 80-90 minutes on 2 CPU cores
    python bench/quality.py --quick    # about 12 minutes: 4 tasks, 1 seed, fewer steps
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import common  # noqa: E402
from osrm.plots import plot_interference, plot_scale_curves  # noqa: E402
from osrm.report import results_table  # noqa: E402

REPO = Path(__file__).parents[1]
CONFIG = REPO / "configs" / "offline-suite.yaml"
GRID = (
    "merge.methods={weight_average: {}, task_arithmetic: {scale: [0.2, 0.4, 0.6, 0.8, 1.0]}, "
    "ties: {density: 0.2, scale: 1.0}, dare_linear: {density: 0.5, scale: 1.0}, "
    "dare_ties: {density: 0.5, scale: 1.0}, magnitude_prune: {density: 0.5, scale: 1.0}, "
    "breadcrumbs: {scale: 1.0}, knots: {inner: ties, density: 0.2, scale: 1.0}, "
    "tsv: {scale: 1.0}, regmean: {alpha: 0.9}}"
)
# Fixed settings: each method at its documented default (what a user gets without tuning).
FIXED = {
    "weight_average": "", "task_arithmetic": "scale=1.0", "ties": "density=0.2,scale=1.0",
    "dare_linear": "density=0.5,scale=1.0", "dare_ties": "density=0.5,scale=1.0",
    "magnitude_prune": "density=0.5,scale=1.0", "breadcrumbs": "scale=1.0",
    "knots": "density=0.2,inner=ties,scale=1.0", "tsv": "scale=1.0", "regmean": "alpha=0.9",
}  # fmt: skip
TASKS = (
    "rotten_tomatoes,trec,sms_spam,vader_movies,tweet_sentiment,fine_foods,epistemic_reasoning,"
    "multiemo"
)
COMMON = ["train.max_length=64", "stats.max_length=64", "train.batch_size=16", GRID]
LIMITS = {
    "full": {
        "seeds": [0, 1],
        "overrides": [
            f"tasks=[{TASKS}]", "lora.inits=[lora,osrm,osrm_mean,contrast,contrast_frozen]",
            "train.steps=120", "train.lr=3.0e-3", "train.frozen_a_lr=9.0e-3",
            "train.frozen_a_steps=360",
            "stats.examples=128", "eval.max_eval_examples=150", *COMMON,
        ],
    },
    "quick": {
        "seeds": [0],
        "overrides": [
            "tasks=[rotten_tomatoes,trec,sms_spam,vader_movies]",
            "lora.inits=[lora,osrm,osrm_mean,contrast,contrast_frozen]",
            "train.steps=80", "train.lr=3.0e-3", "train.frozen_a_lr=9.0e-3",
            "train.frozen_a_steps=240",
            "stats.examples=64", "eval.max_eval_examples=100", *COMMON,
        ],
    },
    # not a result: checks the whole script in about a minute
    "smoke": {
        "seeds": [0, 1],
        "overrides": [
            "tasks=[trec,sms_spam]", "lora.inits=[lora,contrast_frozen]", "train.steps=3",
            "train.frozen_a_lr=9.0e-3", "train.frozen_a_steps=4", "stats.examples=16",
            "eval.max_eval_examples=16",
            *COMMON,
        ],
    },
}  # fmt: skip


def run_seed(seed: int, overrides: list[str], run_root: Path) -> dict:
    from osrm import pipeline, rundir

    run_dir = run_root / f"seed{seed}"
    rundir.clear_run_dir(run_dir)  # a leftover run would be reused, not timed
    start = time.perf_counter()
    out = pipeline.run(CONFIG, [*overrides, f"seed={seed}", f"run_dir={run_dir}"])
    cfg = out["cfg"]
    rows = results_table(out["results"], cfg.task_names)
    subspace = json.loads((run_dir / "subspace_report.json").read_text())["modes"]
    return {"seed": seed, "rows": rows, "interference": out["interference"],
            "subspace": subspace, "tasks": cfg.task_names, "seconds": time.perf_counter() - start,
            "config": cfg.model_dump(mode="json")}  # fmt: skip


def _stats(values: list[float]) -> dict:
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "spread": spread, "n": len(values)}


def without_seed(hp: str) -> str:
    """``density=0.5,seed=1`` -> ``density=0.5``: DARE's drop seed follows the run's seed, and
    the same setting must pool over seeds."""
    return ",".join(p for p in hp.split(",") if p and not p.startswith("seed="))


def aggregate(runs: list[dict]) -> dict:
    """Mean and spread over seeds of every row's scores, avg and norm_avg."""
    tasks = runs[0]["tasks"]
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        for row in run["rows"]:
            key = (row["init"], row["model"], row["method"], without_seed(row["hp"]))
            by_key[key].append(row)
    rows = []
    for (init, model, method, hp), group in by_key.items():
        row = {"init": init, "model": model, "method": method, "hp": hp}
        for col in [*tasks, "avg", "norm_avg"]:
            values = [g[col] for g in group if g.get(col) is not None]
            row[col] = _stats(values) if values else None
        rows.append(row)
    inits = list(dict.fromkeys(r["init"] for r in rows))
    inter = {i: {j: {t: statistics.fmean(r["interference"][i][j][t] for r in runs) for t in tasks}
                 for j in tasks} for i in inits}  # fmt: skip
    return {"tasks": tasks, "inits": inits, "rows": rows, "interference": inter}


def write_result(name: str, limits: dict, runs: list[dict], seconds: float, out: Path) -> dict:
    """Aggregate the finished seeds, plot, and write the JSON atomically (after every seed)."""
    result = {"benchmark": "quality", "variant": name, "seeds": limits["seeds"],
              "finished_seeds": [r["seed"] for r in runs], "overrides": limits["overrides"],
              "config": str(CONFIG.relative_to(REPO)), "runs": runs,
              "aggregate": aggregate(runs), "fixed": FIXED, "wall_seconds": seconds,
              "device": "cuda" if torch.cuda.is_available() else "cpu"}  # fmt: skip
    figures = REPO / "docs" / "results" if name != "smoke" else out.parent
    figures.mkdir(parents=True, exist_ok=True)
    agg = result["aggregate"]
    flat = [{**r, "norm_avg": (r["norm_avg"] or {}).get("mean")} for r in agg["rows"]]
    plot_scale_curves(flat, figures / f"quality-{name}-scale.png")
    plot_interference(agg["interference"], figures / f"quality-{name}-interference.png")
    common.write_json(out, result, indent=1)
    return result


def main() -> dict:
    args, name = common.variant_args(__doc__, "bench/results/quality-VARIANT.json")
    # 2 threads on the 2-core CI-sized machine; more where a GPU box has the cores to feed it
    common.setup_torch(8 if torch.cuda.is_available() else 2)
    limits = LIMITS[name]
    run_root = Path(args.run_root or f"runs/bench/quality-{name}")
    out = Path(args.json or common.RESULTS / f"quality-{name}.json")
    start, runs = time.perf_counter(), []
    for seed in limits["seeds"]:  # results are written after each seed: a timeout keeps them
        runs.append(run_seed(seed, limits["overrides"], run_root))
        result = write_result(name, limits, runs, time.perf_counter() - start, out)
    print(f"wrote {out} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
