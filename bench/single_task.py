"""Benchmark: single-task scores of LoRA vs OSRM-initialised adapters (the paper claims parity).

all-MiniLM-L6-v2 (real weights), LoRA r=8, alpha 16 on query+value of all layers, one head per
task, on real offline tasks; every init trains with the same seed, head, batches and settings.
Scores are each task's main metric on its test split.

    python bench/single_task.py [--inits lora,osrm,contrast] [--steps 300] [--json F]
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


import common  # noqa: E402
from osrm.config import load_config  # noqa: E402
from osrm.models import load_base  # noqa: E402
from osrm.pipeline import DEMO_CONFIG  # noqa: E402
from osrm.report import markdown_table  # noqa: E402
from osrm.rundir import clear_run_dir  # noqa: E402
from osrm.stages.evaluation import eval_task, load_adapter_model  # noqa: E402
from osrm.stages.statistics import stats_stage  # noqa: E402
from osrm.stages.training import adapter_stage  # noqa: E402
from osrm.tasks.registry import get_task  # noqa: E402

TASKS = "rotten_tomatoes,trec,sms_spam,tweet_sentiment,vitaminc,vader_movies"


def main() -> dict:
    parser = common.new_parser(__doc__)
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--inits", default="lora,osrm,contrast")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-examples", type=int, default=1000)
    parser.add_argument("--run-dir", default="runs/bench/single_task")
    common.add_json(parser)
    args = parser.parse_args()
    common.setup_torch()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = [
        f"run_dir={args.run_dir}", f"tasks=[{args.tasks}]", f"lora.inits=[{args.inits}]",
        f"train.steps={args.steps}", f"train.lr={args.lr}", "train.batch_size=16",
        "train.max_length=128", f"eval.max_eval_examples={args.eval_examples}",
    ]  # fmt: skip
    cfg = load_config(DEMO_CONFIG, overrides)
    run_dir = Path(cfg.run_dir)
    clear_run_dir(run_dir)  # a leftover run's adapters would be reused, not timed
    start = time.perf_counter()
    model, tok = load_base(cfg)
    specs = {task: get_task(task) for task in cfg.tasks}
    stats, metas = stats_stage(cfg, run_dir, specs, model, tok)
    adapters = adapter_stage(cfg, run_dir, specs, stats, metas)
    rows, raw = [], {}
    for task in cfg.tasks:
        spec = specs[task]
        row = {"task": task, "metric": spec.main_metric}
        for init in cfg.lora.inits:
            peft_model, tokenizer = load_adapter_model(cfg, adapters[init, task], spec)
            scores = eval_task(cfg, peft_model, tokenizer, spec)
            record = json.loads((adapters[init, task] / "training.json").read_text())
            raw[f"{init}/{task}"] = {"scores": scores, "train_seconds": record["seconds"]}
            row[init] = scores[spec.main_metric]
        rows.append(row)
    mean = {"task": "mean", "metric": ""}
    mean.update({i: sum(r[i] for r in rows) / len(rows) for i in cfg.lora.inits})
    rows.append(mean)
    wall = time.perf_counter() - start
    columns = {"task": "task", "metric": "metric", **{i: i for i in cfg.lora.inits}}
    table = markdown_table(rows, columns)
    print(
        f"\nSingle-task test scores, all-MiniLM-L6-v2, r={cfg.lora.rank}, {args.steps} steps, "
        f"lr {args.lr}, batch 16, <= {args.eval_examples} test examples, seed {cfg.seed}:\n"
    )
    print(table)
    train_s = {i: sum(raw[f"{i}/{t}"]["train_seconds"] for t in cfg.tasks) for i in cfg.lora.inits}
    print(f"\ntraining seconds per init: {train_s}; wall time {wall:.0f} s")
    result = {"benchmark": "single_task", "config": cfg.model_dump(mode="json"), "rows": rows,
              "raw": raw, "wall_seconds": wall, "table": table}  # fmt: skip
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
