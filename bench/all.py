"""Run every benchmark in bench/, stamp each with its command, versions and wall time, then write
docs/RESULTS.md from the raw JSON (`bench/report.py`). This is what `make bench` runs.

    python bench/all.py             # the full suite (2 hours + the budget study, several more)
    python bench/all.py --quick     # quality and budget --quick, a small single-task run, the rest
    python bench/all.py --only merge_speed,dist_stats   # a subset; other results are kept

Each benchmark runs in its own process (so timings do not share a warm cache or thread pool)
and writes `bench/results/<name>.json`; `bench/results/index.json` records how each was made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

import common

REPO, RESULTS = common.REPO, common.RESULTS
SINGLE_TASK_LIMITS = ["--steps", "100", "--lr", "3e-3", "--eval-examples", "300"]
QUICK_SINGLE_TASK = ["--steps", "60", "--lr", "3e-3", "--eval-examples", "200",
                     "--tasks", "rotten_tomatoes,trec,sms_spam"]  # fmt: skip

# name -> (script, arguments); the order is the order they run in (fast ones first)
SUITE = {
    "stats_overhead": ("stats_overhead.py", []),
    "train_speed": ("train_speed.py", []),
    "merge_speed": ("merge_speed.py", []),
    "merge_speed_llm": ("merge_speed_llm.py", []),
    "dist_stats": ("dist_stats.py", []),
    "single_task": ("single_task.py", SINGLE_TASK_LIMITS),
    "quality": ("quality.py", []),
    "budget": ("budget.py", []),
    "retrofit": ("retrofit.py", []),
    "decoder": ("decoder.py", []),
    "generate": ("generate.py", []),
    "add_task": ("add_task.py", []),
}


def result_name(name: str, quick: bool) -> str:
    """quality, single_task and budget have quick variants, kept beside the full results."""
    quick_ones = ("quality", "single_task", "budget", "retrofit", "generate", "add_task")
    return f"{name}-quick" if quick and name in quick_ones else name


def run_one(name: str, script: str, extra: list[str], quick: bool) -> dict:
    """Run one benchmark script; returns its stamp (command, wall time, exit status)."""
    out = (RESULTS / f"{result_name(name, quick)}.json").relative_to(REPO)
    if quick and name in ("quality", "budget", "retrofit", "generate", "add_task"):
        extra = ["--quick"]
    if quick and name == "single_task":
        extra = [*QUICK_SINGLE_TASK, "--run-dir", "runs/bench/single_task-quick"]
    args = [*extra, "--json", str(out)]
    command = ["python", f"bench/{script}", *args]
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *command[1:]], cwd=REPO, check=False)
    wall = time.perf_counter() - start
    print(f"=== {name}: exit {proc.returncode} after {wall:.0f} s", flush=True)
    return {"command": " ".join(command), "json": str(out),
            "wall_seconds": wall, "returncode": proc.returncode,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip


def main() -> int:
    parser = common.new_parser(__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=None, help="comma-separated benchmark names")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(SUITE)
    unknown = sorted(set(names) - set(SUITE))
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {unknown}; expected some of {list(SUITE)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    RESULTS.mkdir(parents=True, exist_ok=True)
    index_path = RESULTS / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"runs": {}}
    start = time.perf_counter()
    failed = []
    for name in names:
        script, extra = SUITE[name]
        env = common.environment()  # the code as it was when the benchmark started
        stamp = run_one(name, script, extra, args.quick)
        stamp["environment"] = env
        index["runs"][result_name(name, args.quick)] = stamp
        index_path.write_text(json.dumps(index, indent=1) + "\n")  # after each: a crash keeps it
        if stamp["returncode"]:
            failed.append(name)
    record = {"command": "python bench/all.py " + " ".join(sys.argv[1:]), "names": names,
              "wall_seconds": time.perf_counter() - start, "failed": failed}  # fmt: skip
    if args.only or args.quick:  # the last full suite's record stays the document's headline
        index.setdefault("partial", []).append(record)
    else:
        index["suite"] = record
    index_path.write_text(json.dumps(index, indent=1) + "\n")
    print(f"\nsuite wall time {record['wall_seconds']:.0f} s; failed: {failed or 'none'}")
    if not args.no_report:
        report = subprocess.run([sys.executable, "bench/report.py"], cwd=REPO, check=False)
        failed += ["report"] if report.returncode else []
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
