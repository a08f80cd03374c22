"""Benchmark: does merge-readiness hold with training? (training budgets, issue 15)

One `osrm run` per (seed, setting) on configs/offline-suite.yaml's model (all-MiniLM-L6-v2, r=8,
query+value) and 6 real tasks of mixed kind (binary and 3/6-class classification, spam F1, the
`vader_movies` regression and the `epistemic_reasoning` premise/hypothesis pair task). Each run
trains its adapters for the largest budget at one fixed lr and saves the smaller budgets along the
same trajectory (`train.checkpoints`); every budget is scored alone and merged with task
arithmetic (λ grid), TIES, DARE-TIES and RegMean. Settings: the inits `lora`, `osrm`, `contrast`,
then the two options that keep A where its init put it (`lora.a_subspace` = rank,
`train.interference_penalty` = 1) on the OSRM-family init with the best merged average at the
largest budget (TA and TIES, mean over seeds). Runs go two at a time, each single-threaded.
For issue 16 the same runs also merge with task weights from the statistics (`weights: auto`,
TA and TIES) and score and merge `lora`'s adapters retrofitted at μ = 0.5 and 1 (`lora+rf0.5`,
`lora+rf1`): post-hoc settings, no extra training.

Results: `bench/results/budget.json` (or --json), figures `docs/results/budget-<variant>-*.png`;
`bench/report.py` turns them into docs/RESULTS.md. A finished run is reused on a rerun (its run
directory and `job.json` stay under --run-root), so an interrupted study resumes. Each finished run
also leaves the small text files the summary reads (its resolved config, result rows, budget
diagnostics and job record: no weights) in `bench/results/budget[-VARIANT]-runs/<run>/`; they are
committed, so the study resumes on another machine, and a run is taken from there only when its
overrides and configs/offline-suite.yaml are those of the rerun.

    python bench/budget.py               # about 8 h on 2 CPU cores (15 runs of ~1.1 h, 2 at a time)
    python bench/budget.py --quick       # about 30 minutes: 4 tasks, 1 seed, short budgets
    python bench/budget.py --kept-only   # the JSON and figures from the committed runs alone
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import budget_summary  # noqa: E402
import common  # noqa: E402

REPO = common.REPO
CONFIG = REPO / "configs" / "offline-suite.yaml"
TASKS = "rotten_tomatoes,trec,sms_spam,vader_movies,tweet_sentiment,epistemic_reasoning"
# weights: auto (issue 16) beside the given weights: TA at scale 1 (no search), TIES
GRID = (
    "merge.methods={task_arithmetic: [{scale: [0.2, 0.4, 0.6, 0.8, 1.0]}, "
    "{scale: 1.0, weights: auto}], ties: {density: 0.2, scale: 1.0, weights: [given, auto]}, "
    "dare_ties: {density: 0.5, scale: 1.0}, regmean: {alpha: 0.9}}"
)
# issue 16: plain LoRA's adapters (final and every budget) retrofitted at two μ, no training
RETROFIT = "merge.retrofit={mu: [0.5, 1.0], inits: [lora]}"
COMMON = ["train.lr=2.0e-3", "train.batch_size=8", "train.max_length=48", "stats.max_length=48",
          "subspace.modes=[cov, contrast]", "merge.save=false", GRID]  # fmt: skip
INITS = ("lora", "osrm", "contrast")
FAMILY = ("osrm", "contrast")  # the OSRM-family inits a variant may build on
KEPT_FILES = ("config.yaml", "results.jsonl", "budget_diagnostics.json")  # what the summary reads
RANK = 8  # configs/offline-suite.yaml's lora.rank: a_subspace = rank keeps A's row space fixed
VARIANTS = {"sub": [f"lora.a_subspace={RANK}"], "pen": ["train.interference_penalty=1.0"]}
LIMITS = {
    "full": {"seeds": [0, 1, 2], "tasks": TASKS, "steps": 1000, "checkpoints": [100, 300],
             "overrides": ["stats.examples=128", "eval.max_eval_examples=200"]},
    "quick": {"seeds": [0], "tasks": "rotten_tomatoes,trec,vader_movies,epistemic_reasoning",
              "steps": 150, "checkpoints": [25, 75],
              "overrides": ["stats.examples=64", "eval.max_eval_examples=100"]},
    # not a result: checks the whole script in a few minutes
    "smoke": {"seeds": [0, 1], "tasks": "trec,vader_movies", "steps": 6, "checkpoints": [2, 4],
              "overrides": ["stats.examples=16", "eval.max_eval_examples=16"]},
}  # fmt: skip


def overrides(limits: dict, seed: int, init: str, extra: list[str], run_dir: Path) -> list[str]:
    """The `osrm run` overrides of one job."""
    retrofit = [RETROFIT] if init == "lora" and not extra else []
    return [
        f"tasks=[{limits['tasks']}]", f"lora.inits=[{init}]", f"train.steps={limits['steps']}",
        f"train.checkpoints={limits['checkpoints']}", *COMMON, *limits["overrides"], *extra,
        *retrofit, f"seed={seed}", f"run_dir={run_dir}",
    ]  # fmt: skip


def run_job(
    label: str, init: str, extra: list[str], seed: int, limits: dict, root: Path, kept: Path,
    run: bool = True,
) -> dict | None:  # fmt: skip
    """One run of the study (see :func:`run_osrm`), in ``root/seed<seed>-<label>``, its record
    kept in ``kept/seed<seed>-<label>`` (see :func:`kept_job`); with ``run`` False only the
    kept record (None when there is none)."""
    run_dir = root / f"seed{seed}-{label}"
    args = overrides(limits, seed, init, extra, run_dir)
    record = {"label": label, "init": init, "seed": seed}
    job = kept_job(kept / run_dir.name, args)
    if job is not None or not run:
        return job
    return keep_job(run_osrm(run_dir, args, record, "budget_diagnostics.json"), kept / run_dir.name)


def _fingerprint(args: list[str], config: Path = CONFIG) -> dict:
    """What makes two runs the same run: the overrides (but where they run) and the config file."""
    digest = hashlib.sha256(config.read_bytes()).hexdigest()
    return {"overrides": [a for a in args if not a.startswith("run_dir=")], "config_sha256": digest}


def kept_job(kept: Path, args: list[str], config: Path = CONFIG) -> dict | None:
    """The committed record of a finished run with these overrides, its ``run_dir`` pointing at
    the kept files; None when there is none or it was made with other overrides or config."""
    marker = kept / "job.json"
    job = json.loads(marker.read_text()) if marker.is_file() else None
    if not job or job.get("fingerprint") != _fingerprint(args, config):
        return None
    return {**job, "run_dir": str(kept)}


def keep_job(
    job: dict, kept: Path, config: Path = CONFIG, files: tuple[str, ...] = KEPT_FILES
) -> dict:
    """Copy the files the summary reads (``files``, no weights) of a finished run to ``kept``,
    with its job record, the run's fingerprint and the code and packages it ran with."""
    tmp = kept.with_name(f".{kept.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in files:
        shutil.copy2(Path(job["run_dir"]) / name, tmp / name)
    args = job["overrides"]
    record = {**job, "fingerprint": _fingerprint(args, config),
              "environment": common.environment()}  # fmt: skip
    (tmp / "job.json").write_text(json.dumps(record, indent=1) + "\n")
    shutil.rmtree(kept, ignore_errors=True)
    tmp.replace(kept)
    return {**record, "run_dir": str(kept)}


def run_osrm(
    run_dir: Path, args: list[str], record: dict, needs: str | None = None, config: Path = CONFIG
) -> dict:
    """One `osrm run CONFIG args` in its own single-threaded process, logged beside ``run_dir``;
    its record (``record`` + overrides, seconds, run_dir in `job.json`) marks it done, so a rerun
    reuses it. A done run without the file ``needs`` (made by an older osrm) runs again: `osrm
    run` reuses its adapters and scores and writes the rest; the recorded seconds stay those of
    the first run."""
    marker = run_dir / "job.json"
    before = json.loads(marker.read_text()) if marker.is_file() else None
    if before and (needs is None or (run_dir / needs).is_file()):
        return before
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    log = run_dir.parent / f"{run_dir.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        command = [sys.executable, "-m", "osrm", "-q", "run", str(config), *args]
        proc = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        raise RuntimeError(f"run {run_dir.name} failed (exit {proc.returncode}); see {log}")
    seconds = before["seconds"] if before else time.perf_counter() - start
    job = {**record, "overrides": args, "seconds": seconds, "run_dir": str(run_dir)}
    marker.write_text(json.dumps(job, indent=1) + "\n")
    return job


def run_jobs(
    jobs: list[tuple], limits: dict, root: Path, kept: Path, done: list[dict], save,
    kept_only: bool = False,
) -> None:  # fmt: skip
    """Run (label, init, extra, seed) jobs two at a time; ``save(done)`` after each one. With
    ``kept_only`` run nothing: take the jobs whose records are kept and skip the others."""
    if kept_only:
        found = (run_job(*job, limits, root, kept, run=False) for job in jobs)
        done += [j for j in found if j is not None]
        return
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(run_job, *job, limits, root, kept) for job in jobs]
        for future in futures:
            done.append(future.result())
            save(done)


def main() -> dict:
    flags = {"--kept-only": "run nothing: write the JSON and figures from the kept run records"}
    args, name = common.variant_args(__doc__, "bench/results/budget[-VARIANT].json", flags)
    limits = LIMITS[name]
    root = Path(args.run_root or REPO / "runs" / "bench" / f"budget-{name}")
    root.mkdir(parents=True, exist_ok=True)
    suffix = "" if name == "full" else f"-{name}"
    out = Path(args.json or common.RESULTS / f"budget{suffix}.json")
    figures = REPO / "docs" / "results" if name != "smoke" else out.parent
    start, done, env = time.perf_counter(), [], common.environment()  # the code as it started

    def save(jobs: list[dict]) -> dict:
        result = budget_summary.summarise(name, limits, jobs, time.perf_counter() - start, COMMON)
        result["command"] = "python bench/budget.py" + ("" if name == "full" else f" --{name}")
        if args.kept_only:  # nothing ran: the runs' own times are in job_seconds
            result["command"] += " --kept-only"
            result["wall_seconds"] = None
        result["planned_runs"] = len(limits["seeds"]) * (len(INITS) + len(VARIANTS))
        result["environment"] = env
        budget_summary.plot(result, figures / f"budget-{name}")
        common.write_json(out, result, indent=1)
        return result

    seeds = limits["seeds"]
    kept = out.with_name(f"{out.stem}-runs")
    inits = [(i, i, [], s) for s in seeds for i in INITS]
    run_jobs(inits, limits, root, kept, done, save, args.kept_only)
    if len(done) == len(inits):  # the variants build on the best init over every seed
        best = budget_summary.best_family_init(save(done), FAMILY)
        variants = [(f"{best}+{v}", best, extra, s) for s in seeds for v, extra in VARIANTS.items()]
        run_jobs(variants, limits, root, kept, done, save, args.kept_only)
    bases = {j["init"] for j in done if j["label"] != j["init"]}
    result = save(done)
    print(
        f"wrote {out} ({len(done)} of {result['planned_runs']} runs; variants on "
        f"{', '.join(bases) or 'none yet'})"
    )
    return result


if __name__ == "__main__":
    main()
