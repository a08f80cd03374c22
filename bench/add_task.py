"""Benchmark: add a task to a merged model later (issue 18, `osrm add-task`).

Per seed: one `osrm run` of configs/offline-suite.yaml (all-MiniLM-L6-v2, r=8 on query/value) on
5 real tasks with the inits `lora` and `contrast`, the OSRM-family setting the budget study found
best: `contrast` trained with the interference penalty (`train.interference_penalty=1`, which
leaves `lora` untouched); then a 6th task added by `osrm add-task` to a copy of that run twice:
alone, and with the old adapters retrofitted against the new task (`--retrofit-mu 1`). Reported
per init and merge method (task arithmetic at scale 1 and its best λ, TIES): the 5 old tasks'
merged average before and after the addition and the new task's merged score, normalised by the
individual adapters as they were before the addition and raw, beside each init's single-task
averages (mean ± spread over the seeds). Every process single-threaded, the two seeds side by
side; a finished step is reused (a rerun that ran nothing keeps the recorded wall time and
environment).

    python bench/add_task.py            # 2 seeds, 43 min on 2 CPU cores
    python bench/add_task.py --quick    # 3 + 1 tasks, 1 seed, 60 steps
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import budget
import common
from budget_summary import pool
from osrm.report import read_results
from osrm.rundir import BEFORE_FILE, CHANGE_FILE

REPO = common.REPO
OLD, NEW = "rotten_tomatoes,trec,sms_spam,vader_movies,epistemic_reasoning", "tweet_sentiment"
QUICK_OLD = "rotten_tomatoes,trec,sms_spam"
GRID = "merge.methods={task_arithmetic: {scale: [0.4, 0.6, 0.8, 1.0]}, ties: {density: 0.2}}"
MU = 1.0
INITS = ("lora", "contrast")
PENALTY = 1.0
ADDITIONS = {"added": [], f"added+rf{MU:g}": ["--retrofit-mu", str(MU)]}  # label -> add-task args


def overrides(name: str, seed: int, run_dir: Path) -> list[str]:
    steps, stats, evals = {"full": (200, 128, 200), "quick": (60, 64, 100),
                           "smoke": (4, 16, 16)}[name]  # fmt: skip
    tasks = OLD if name == "full" else QUICK_OLD
    return [
        f"tasks=[{tasks}]", f"lora.inits=[{','.join(INITS)}]", f"train.steps={steps}",
        "train.lr=2.0e-3", "train.batch_size=16", "train.max_length=64", "stats.max_length=64",
        f"stats.examples={stats}", f"eval.max_eval_examples={evals}",
        f"train.interference_penalty={PENALTY}", "subspace.modes=[contrast]", GRID,
        f"seed={seed}", f"run_dir={run_dir}",
    ]  # fmt: skip


def finished(grown: Path) -> bool:
    """Whether `osrm add-task` of the new task finished in ``grown``."""
    return (grown / "history" / f"1-{NEW}" / CHANGE_FILE).is_file()


def add(run_dir: Path, grown: Path, extra: list[str]) -> float:
    """`osrm add-task` of the new task on a copy of ``run_dir`` (reused when finished)."""
    if finished(grown):
        return json.loads((grown / "add_task_job.json").read_text())["seconds"]
    if not grown.is_dir():
        shutil.copytree(run_dir, grown, ignore=shutil.ignore_patterns("job.json"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    with open(f"{grown}.log", "w") as log:
        command = [sys.executable, "-m", "osrm", "-q", "add-task", str(grown), NEW, *extra]
        subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    seconds = time.perf_counter() - start
    (grown / "add_task_job.json").write_text(json.dumps({"seconds": seconds}) + "\n")
    return seconds


def seed_job(name: str, seed: int, root: Path) -> dict:
    run_dir = root / f"seed{seed}"
    job = budget.run_osrm(run_dir, overrides(name, seed, run_dir), {"seed": seed})
    times = {}
    for label, extra in ADDITIONS.items():
        times[label] = add(run_dir, root / f"seed{seed}-{label}", extra)
    return {**job, "add_seconds": times}


def rows_of(run: Path, label: str, seed: int, old: list[str]) -> list[dict]:
    """Per init × merged setting: the old tasks' merged average before and after, the new task's,
    normalised by the adapters as they were before the addition (the user's reference, also for
    retrofitted ones) and raw (``*_abs``: the main metric, comparable across inits)."""
    before = read_results(run / "history" / f"1-{NEW}" / BEFORE_FILE)
    after = read_results(run / "results.jsonl")

    def scores(results, kind: str) -> dict:
        return {(r.init, r.method, r.hp, r.task): r.score for r in results
                if r.kind == kind and r.step is None}  # fmt: skip

    single_b, single_a = scores(before, "individual"), scores(after, "individual")
    merged_b, merged_a = scores(before, "merged"), scores(after, "merged")
    reference = {**single_a, **single_b}  # the new task's adapter, the old ones before

    def norm(merged: dict, key: tuple, tasks: list[str]) -> float | None:
        """As `osrm.report.results_table`'s norm_avg: none unless every individual score > 0."""
        own = [reference[key[0], "", "", t] for t in tasks]
        if min(own) <= 0:
            return None
        return sum(merged[(*key, t)] / o for t, o in zip(tasks, own, strict=True)) / len(tasks)

    def avg(table: dict, key: tuple, tasks: list[str]) -> float:
        return sum(table[(*key, t)] for t in tasks) / len(tasks)

    out = []
    for init, method, hp in sorted({k[:3] for k in merged_a}):
        key, single = (init, method, hp), (init, "", "")
        out.append({
            "series": label, "seed": seed, "init": init, "method": method, "hp": hp,
            "old_before": norm(merged_b, key, old), "old_after": norm(merged_a, key, old),
            "new": norm(merged_a, key, [NEW]),
            "old_before_abs": avg(merged_b, key, old), "old_after_abs": avg(merged_a, key, old),
            "new_abs": merged_a[(*key, NEW)],
            "old_single_before": avg(single_b, single, old),
            "old_single_after": avg(single_a, single, old), "new_single": single_a[(*single, NEW)],
        })  # fmt: skip
    return out


def summarise(root: Path, seeds: list[int], old: list[str]) -> list[dict]:
    rows = [r for s in seeds for label in ADDITIONS
            for r in rows_of(root / f"seed{s}-{label}", label, s, old)]  # fmt: skip
    cols = ["old_before", "old_after", "new", "old_before_abs", "old_after_abs", "new_abs",
            "old_single_before", "old_single_after", "new_single"]  # fmt: skip
    return pool(rows, ["series", "init", "method", "hp"], cols)


def main() -> dict:
    args, name = common.variant_args(__doc__, "bench/results/add_task[-VARIANT].json")
    seeds = [0, 1] if name == "full" else [0]
    root = Path(args.run_root or REPO / "runs" / "bench" / f"add-task-{name}")
    out = Path(args.json or common.RESULTS / f"add_task{'' if name == 'full' else '-' + name}.json")
    start, env = time.perf_counter(), common.environment()
    reused = out.is_file() and all(
        finished(root / f"seed{s}-{label}") for s in seeds for label in ADDITIONS
    )  # nothing will run
    earlier = json.loads(out.read_text()) if reused else {}
    with ThreadPoolExecutor(max_workers=2) as executor:
        jobs = list(executor.map(lambda s: seed_job(name, s, root), seeds))
    old = (OLD if name == "full" else QUICK_OLD).split(",")
    result = {"benchmark": "add_task", "variant": name, "seeds": seeds, "old_tasks": old,
              "new_task": NEW, "retrofit_mu": MU, "inits": list(INITS),
              "interference_penalty": PENALTY,
              "config": "configs/offline-suite.yaml", "overrides": overrides(name, 0, root)[:-2],
              "jobs": jobs, "rows": summarise(root, seeds, old),
              "environment": earlier.get("environment", env),
              "command": "python bench/add_task.py" + ("" if name == "full" else f" --{name}"),
              "wall_seconds": earlier.get("wall_seconds", time.perf_counter() - start)}  # fmt: skip
    common.write_json(out, result, indent=1)
    print(f"wrote {out} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
