"""Benchmark: generative tasks on a decoder, no heads (issue 17). configs/smollm2-generate.yaml
(SmolLM2-135M-Instruct, r=8 on q/v, 4 built-in tasks answered from their prompts, scored by the
log-likelihood of each label's verbaliser), inits `lora` and `osrm` (and any OSRM-family
variants given with --variant), 2 seeds. Per init: the base model's zero-shot scores, the
individual adapters' and every merge's, pooled over seeds by the report's verdict
(osrm.verdict: mean ± spread, best and default setting of each method). One `osrm run` per
(seed, setting), two at a time, each single-threaded; a finished run is reused on a rerun and
kept (its summary inputs, no weights) in bench/results/generate-runs/ like the budget study's.

    python bench/generate.py                       # 2 seeds
    python bench/generate.py --quick               # 1 seed, 2 tasks, short
    python bench/generate.py --variant 'osrm+pen=train.interference_penalty=1.0'
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import budget
import common
from osrm.config import load_config
from osrm.metrics import compute_metrics
from osrm.report import read_results, results_table
from osrm.tasks.registry import load_task, task_spec
from osrm.verdict import verdict

REPO = common.REPO
CONFIG = REPO / "configs" / "smollm2-generate.yaml"
LIMITS = {
    "full": {"seeds": [0, 1], "overrides": []},
    "quick": {"seeds": [0], "overrides": [
        "tasks=[{name: rotten_tomatoes, format: generate}, {name: sms_spam, format: generate}]",
        "train.steps=20", "eval.max_eval_examples=40", "stats.examples=32"]},
    "smoke": {"seeds": [0, 1], "overrides": [
        "tasks=[{name: rotten_tomatoes, format: generate}, {name: sms_spam, format: generate}]",
        "train.steps=2", "eval.max_eval_examples=8", "stats.examples=8"]},
}  # fmt: skip


def settings(variants: list[str]) -> dict[str, list[str]]:
    """label -> overrides: the two inits, then each ``label=key=value`` variant."""
    out = {"lora": ["lora.inits=[lora]"], "osrm": ["lora.inits=[osrm]"]}
    for v in variants:
        label, _, override = v.partition("=")
        init = label.split("+")[0]
        out[label] = [f"lora.inits=[{init}]", override]
    return out


def summarise(jobs: list[dict]) -> dict:
    """Per setting: zero-shot and individual averages (mean ± spread over seeds) and the
    verdict's per-method comparison over every setting's seeds pooled."""
    by_seed: dict[int, list[dict]] = {}
    averages: dict[str, dict[str, list[float]]] = {}
    for job in jobs:
        run = Path(job["run_dir"])
        tasks = load_config(run / "config.yaml").task_names
        rows = [{**r, "init": job["label"]} for r in
                results_table(read_results(run / "results.jsonl"), tasks)]  # fmt: skip
        by_seed.setdefault(job["seed"], []).extend(rows)
        for kind in ("base", "individual"):
            avg = next((r["avg"] for r in rows if r["model"] == kind and "avg" in r), None)
            if avg is not None:
                averages.setdefault(job["label"], {}).setdefault(kind, []).append(avg)
    judged = verdict([by_seed[s] for s in sorted(by_seed)])
    return {
        "averages": {
            label: {k: _stat(v) for k, v in kinds.items()} for label, kinds in averages.items()
        },  # fmt: skip
        "verdict": _jsonable(judged),
    }


def per_task(jobs: list[dict]) -> dict:
    """task -> majority-class score, and per setting the zero-shot and individual scores (mean ±
    spread over seeds): the evidence for "learns well above the majority class"."""
    out: dict[str, dict] = {}
    for job in jobs:
        run = Path(job["run_dir"])
        cfg = load_config(run / "config.yaml")
        for r in read_results(run / "results.jsonl"):
            if r.kind in ("base", "individual"):
                cell = out.setdefault(r.task, {}).setdefault(job["label"], {})
                cell.setdefault(r.kind, []).append(r.score)
        for name in cfg.task_names:
            spec = task_spec(cfg, name)
            out[name]["majority"] = majority(spec, cfg.seed, cfg.eval.max_eval_examples)
    return {task: {label: (v if label == "majority" else {k: _stat(x) for k, x in v.items()})
                   for label, v in cells.items()} for task, cells in out.items()}  # fmt: skip


def majority(spec, seed: int, max_examples: int | None) -> dict:
    """The main metric of always answering the train split's most frequent label, on the test
    examples the runs score (the same seeded subset)."""
    train = load_task(spec, "train", seed=seed).to_pandas()["label"]
    test = np.asarray(load_task(spec, "test", seed=seed, max_examples=max_examples)["label"])
    label = int(train.value_counts().idxmax())
    score = compute_metrics([spec.main_metric], np.full_like(test, label), test)
    return {"label": spec.label_names[label], "metric": spec.main_metric,
            "score": score[spec.main_metric], "seed": seed}  # fmt: skip


def _stat(values: list[float]) -> dict:
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "spread": spread, "n": len(values)}


def _jsonable(v):
    if v is None:
        return None
    rows = [{"method": r["method"], "choice": r["choice"],
             "cells": {i: {**vars(c.score), "hp": c.hp} for i, c in r["cells"].items()},
             "family_minus_lora": r["family_minus_lora"]} for r in v["rows"]]  # fmt: skip
    best = {**v["best"], "score": vars(v["best"]["score"])}
    return {**v, "best": best, "rows": rows}


def main() -> dict:
    parser = common.new_parser(__doc__)
    for flag in ("--quick", "--smoke"):
        parser.add_argument(flag, action="store_true")
    parser.add_argument("--variant", action="append", default=[], help="LABEL=KEY=VALUE")
    parser.add_argument("--run-root", default=None)
    common.add_json(parser)
    args = parser.parse_args()
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    limits, suffix = LIMITS[name], "" if name == "full" else f"-{name}"
    root = Path(args.run_root or REPO / "runs" / "bench" / f"generate-{name}")
    out = Path(args.json or common.RESULTS / f"generate{suffix}.json")
    kept = out.with_name(f"{out.stem}-runs")
    start, env = time.perf_counter(), common.environment()
    jobs = [(label, extra, seed) for seed in limits["seeds"]
            for label, extra in settings(args.variant).items()]  # fmt: skip

    def one(job: tuple) -> dict:
        label, extra, seed = job
        run_dir = root / f"seed{seed}-{label}"
        overrides = [*extra, *limits["overrides"], f"seed={seed}", f"run_dir={run_dir}"]
        record = {"label": label, "seed": seed}
        return budget.kept_job(kept / run_dir.name, overrides, CONFIG) or budget.keep_job(
            budget.run_osrm(run_dir, overrides, record, config=CONFIG), kept / run_dir.name,
            CONFIG, files=("config.yaml", "results.jsonl"))  # fmt: skip

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(one, jobs))
    result = {"benchmark": "generate", "variant": name, "config": "configs/smollm2-generate.yaml",
              "seeds": limits["seeds"], "overrides": limits["overrides"], "jobs": done,
              **summarise(done), "tasks": per_task(done), "environment": env,
              "command": "python bench/generate.py" + ("" if name == "full" else f" --{name}"),
              "wall_seconds": time.perf_counter() - start}  # fmt: skip
    common.write_json(out, result, indent=1)
    print(f"wrote {out} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
