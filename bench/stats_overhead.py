"""Benchmark: statistics collection vs a plain no-grad forward pass over the same batches.

all-MiniLM-L6-v2, hooks on query+value of all 6 layers (float64 XᵀX, Σx, token counts over
non-padding tokens), 256 real examples at max length 64. Both are timed in the same process,
interleaved, and the median of the repeats is reported. Target: ratio <= 1.15.

    python bench/stats_overhead.py [--examples 256] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import common  # noqa: E402
from osrm.models import load_model  # noqa: E402
from osrm.stats import collect_stats  # noqa: E402
from osrm.tasks.batching import batches, encode  # noqa: E402
from osrm.tasks.registry import load_task  # noqa: E402


def main() -> dict:
    parser = common.new_parser(__doc__)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--task", default="rotten_tomatoes")
    common.add_json(parser)
    args = parser.parse_args()
    common.setup_torch()
    model, tok = load_model("sentence-transformers/all-MiniLM-L6-v2", num_labels=2)
    model.eval()
    data = load_task(args.task, "train", max_examples=args.examples)
    loader = list(batches(encode(data, tok, args.max_length), tok, args.batch_size))
    inputs = [{k: v for k, v in b.items() if k != "labels"} for b in loader]

    def plain() -> None:
        with torch.no_grad():
            for b in inputs:
                model(**b)

    def stats() -> None:
        collect_stats(model, loader, ["query", "value"], progress=False)

    plain(), stats()  # warm-up
    times: dict[str, list[float]] = {"forward": [], "stats": []}
    for _ in range(args.repeats):
        for name, fn in (("forward", plain), ("stats", stats)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    fwd, st = statistics.median(times["forward"]), statistics.median(times["stats"])
    tokens = sum(int(b["attention_mask"].sum()) for b in loader)
    result = {
        "benchmark": "stats_overhead",
        "model": "all-MiniLM-L6-v2",
        "task": args.task,
        "examples": len(data),
        "tokens": tokens,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "forward_s": fwd,
        "stats_s": st,
        "ratio": st / fwd,
        "target_ratio": 1.15,
    }
    common.print_summary(
        f"{len(data)} examples ({tokens} tokens) at max length {args.max_length}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}:",
        [
            f"plain no-grad forward : {fwd:.3f} s",
            f"statistics collection : {st:.3f} s",
            f"ratio                 : {st / fwd:.3f} (target <= 1.15)",
        ],
    )
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
