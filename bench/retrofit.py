"""Benchmark: merge-ready without retraining (issue 16). Retrofitted plain-LoRA adapters against
OSRM-trained ones and plain LoRA, for every merge method; task weights from the statistics
(`weights: auto`) against each method's best grid setting and its default.

The quality benchmark's setup (configs/offline-suite.yaml, all-MiniLM-L6-v2, r=8 on
query/value, its 8 tasks, 120 steps at lr 3e-3, its 10-method grid), inits `lora` and `osrm`,
plus: `lora`'s adapters retrofitted at μ ∈ {0.25, 0.5, 1, 2} (series `lora+rf<μ>`, no
training), and every method once more at its default setting with `weights: auto`. One `osrm
run` per seed, two at a time, each single-threaded; a finished run is reused on a rerun.

    python bench/retrofit.py            # 2 seeds
    python bench/retrofit.py --quick    # 4 tasks, 1 seed, 80 steps
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import budget
import common
from budget_summary import pool, without_seed
from osrm.config import load_config
from osrm.report import hp_string, read_results, results_table
from osrm.stages.evaluation import merge_grid
from quality import FIXED, TASKS

REPO = common.REPO
MUS = (0.25, 0.5, 1.0, 2.0)


def grid() -> str:
    """The quality grid with, per method, one more setting: its default with auto weights."""
    spaces = {
        "weight_average": "{}", "task_arithmetic": "{scale: [0.2, 0.4, 0.6, 0.8, 1.0]}",
        "ties": "{density: 0.2, scale: 1.0}", "dare_linear": "{density: 0.5, scale: 1.0}",
        "dare_ties": "{density: 0.5, scale: 1.0}", "magnitude_prune": "{density: 0.5, scale: 1.0}",
        "breadcrumbs": "{scale: 1.0}", "knots": "{inner: ties, density: 0.2, scale: 1.0}",
        "tsv": "{scale: 1.0}", "regmean": "{alpha: 0.9}",
    }  # fmt: skip
    auto = {m: "{" + ", ".join(f"{kv.replace('=', ': ')}" for kv in hp.split(",") if kv)
            for m, hp in FIXED.items()}  # fmt: skip
    parts = [f"{m}: [{space}, {auto[m]}{', ' if FIXED[m] else ''}weights: auto}}]"
             for m, space in spaces.items()]  # fmt: skip
    return "merge.methods={" + ", ".join(parts) + "}"


def overrides(quick: bool, seed: int, run_dir: Path) -> list[str]:
    tasks = "rotten_tomatoes,trec,sms_spam,vader_movies" if quick else TASKS
    return [
        f"tasks=[{tasks}]", "lora.inits=[lora,osrm]", f"train.steps={80 if quick else 120}",
        "train.lr=3.0e-3", "train.batch_size=16", "train.max_length=64", "stats.max_length=64",
        f"stats.examples={64 if quick else 128}",
        f"eval.max_eval_examples={100 if quick else 150}", "subspace.modes=[cov]", grid(),
        f"merge.retrofit={{mu: [{', '.join(map(str, MUS))}], inits: [lora]}}",
        f"seed={seed}", f"run_dir={run_dir}",
    ]  # fmt: skip


def rows_of(run_dir: Path) -> list[dict]:
    """One run's table rows for the settings of its recorded config (seed dropped from hp)."""
    cfg = load_config(run_dir / "config.yaml")
    allowed = {(m, hp_string(hp)) for m, hp in merge_grid(cfg)}
    results = [r for r in read_results(run_dir / "results.jsonl")
               if r.kind != "merged" or (r.method, r.hp) in allowed]  # fmt: skip
    return [{**r, "hp": without_seed(r["hp"])} for r in results_table(results, cfg.task_names)]


def summarise(runs: list[dict], tasks: list[str]) -> dict:
    """Per series × method: best given-weights setting, default setting, auto setting."""
    rows = [r for run in runs for r in rows_of(Path(run["run_dir"]))]
    cols = [*tasks, "avg", "norm_avg"]
    merged = pool([r for r in rows if r["model"] == "merged"], ["init", "method", "hp"], cols)
    single = pool([r for r in rows if r["model"] == "individual"], ["init"], cols)
    table = []
    for s in single:
        line = {"init": s["init"], "individual": s["avg"], "tasks": {t: s[t] for t in tasks}}
        for method, fixed in FIXED.items():
            mine = [m for m in merged if (m["init"], m["method"]) == (s["init"], method)
                    and m["norm_avg"]]  # fmt: skip
            given = [m for m in mine if "weights=auto" not in m["hp"]]
            best = max(given, key=lambda m: m["norm_avg"]["mean"], default=None)
            default = next((m for m in given if m["hp"] == fixed), None)
            auto = next((m for m in mine if "weights=auto" in m["hp"]), None)
            line[method] = {k: {"hp": v["hp"], "norm_avg": v["norm_avg"], "avg": v["avg"]}
                            for k, v in (("best", best), ("default", default), ("auto", auto))
                            if v}  # fmt: skip
        table.append(line)
    return {"rows": table, "merged": merged, "single": single}


def main() -> dict:
    parser = common.new_parser(__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-root", default=None)
    common.add_json(parser, help="default: bench/results/retrofit[-quick].json")
    args = parser.parse_args()
    quick = args.quick or args.smoke
    name = "smoke" if args.smoke else "quick" if quick else "full"
    seeds = [0] if quick else [0, 1]
    root = Path(args.run_root or REPO / "runs" / "bench" / f"retrofit-{name}")
    out = Path(args.json or common.RESULTS / f"retrofit{'' if name == 'full' else '-' + name}.json")
    extra = (
        ["train.steps=4", "stats.examples=16", "eval.max_eval_examples=16"] if args.smoke else []
    )
    start, env = time.perf_counter(), common.environment()
    with ThreadPoolExecutor(max_workers=2) as executor:
        runs = list(executor.map(lambda seed: run_one(seed, quick, extra, root), seeds))
    tasks = load_config(Path(runs[0]["run_dir"]) / "config.yaml").task_names
    shared = [*overrides(quick, 0, root)[:-2], *extra]  # without seed and run_dir
    result = {"benchmark": "retrofit", "variant": name, "seeds": seeds, "mus": list(MUS),
              "config": "configs/offline-suite.yaml", "overrides": shared,
              "tasks": tasks, "runs": runs, **summarise(runs, tasks), "environment": env,
              "command": "python bench/retrofit.py" + ("" if name == "full" else f" --{name}"),
              "wall_seconds": time.perf_counter() - start}  # fmt: skip
    common.write_json(out, result, indent=1)
    print(f"wrote {out} ({result['wall_seconds']:.0f} s)")
    return result


def run_one(seed: int, quick: bool, extra: list[str], root: Path) -> dict:
    """One seed's `osrm run` through the budget study's runner (single-threaded, resumable)."""
    run_dir = root / f"seed{seed}"
    args = [*overrides(quick, seed, run_dir), *extra]
    return budget.run_osrm(run_dir, args, {"seed": seed})


if __name__ == "__main__":
    main()
