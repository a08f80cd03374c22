"""Benchmark: statistics collection in 1 process vs 2 processes (torchrun, gloo) on the CPU.

all-MiniLM-L6-v2, query+value of all layers, the same real examples; one process uses 2 threads,
each of the two processes 1 thread (the same 2 cores). The distributed run shards the examples
and all-reduces Σxxᵀ, Σx and counts; the script checks both files agree and prints the speed-up.

    python bench/dist_stats.py [--examples 512] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import common  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    import torch

    from osrm import distributed
    from osrm.cli import quiet_libraries
    from osrm.models import load_model
    from osrm.stats import StatsMeta, collect_stats, save_stats
    from osrm.tasks.batching import batches, encode
    from osrm.tasks.registry import load_task

    quiet_libraries()
    torch.set_num_threads(args.threads)
    model, tok = load_model("sentence-transformers/all-MiniLM-L6-v2", 2)
    data = load_task(args.task, "train", max_examples=args.examples)
    loader = list(batches(encode(distributed.shard(data), tok, args.max_length), tok, 32))
    distributed.barrier()
    start = time.perf_counter()
    stats = collect_stats(model.eval(), loader, ["query", "value"], progress=False)
    stats = distributed.all_reduce_stats(stats, torch.device("cpu"))
    distributed.barrier()
    seconds = time.perf_counter() - start
    if distributed.is_main():
        tokens = next(iter(stats.values())).count
        meta = StatsMeta("all-MiniLM-L6-v2", "-", args.task, len(data), tokens, args.max_length)
        save_stats(Path(args.out) / "stats.safetensors", stats, meta)
        (Path(args.out) / "time.json").write_text(
            json.dumps({"seconds": seconds, "tokens": tokens})
        )
    distributed.shutdown()


def run(nproc: int, out: Path, args: argparse.Namespace) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    common = ["--worker", "--out", str(out), "--examples", str(args.examples), "--task", args.task,
              "--max-length", str(args.max_length), "--threads", str(2 // nproc)]  # fmt: skip
    if nproc == 1:
        cmd = [sys.executable, __file__, *common]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={port}", __file__, *common]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(2 // nproc)}
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return json.loads((out / "time.json").read_text())


def main() -> dict:
    parser = common.new_parser(__doc__)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--task", default="rotten_tomatoes")
    parser.add_argument("--max-length", type=int, default=64)
    common.add_json(parser)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return {}
    from osrm.stats import load_stats

    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, Path(tmp) / "one", args)
        two = run(2, Path(tmp) / "two", args)
        s1, _ = load_stats(Path(tmp) / "one" / "stats.safetensors")
        s2, _ = load_stats(Path(tmp) / "two" / "stats.safetensors")
    rel = max(float((s2[k].xtx - s1[k].xtx).abs().max() / s1[k].xtx.abs().max()) for k in s1)
    result = {
        "benchmark": "dist_stats", "examples": args.examples, "tokens": one["tokens"],
        "one_process_s": one["seconds"], "two_processes_s": two["seconds"],
        "speedup": one["seconds"] / two["seconds"], "max_relative_difference": rel,
    }  # fmt: skip
    common.print_summary(
        f"{args.examples} {args.task} examples ({one['tokens']} tokens), all-MiniLM-L6-v2 q+v:",
        [
            f"1 process x 2 threads  : {one['seconds']:.3f} s",
            f"2 processes x 1 thread : {two['seconds']:.3f} s (gloo all-reduce included)",
            f"speed-up               : {one['seconds'] / two['seconds']:.2f}x",
            f"max relative difference of Σxxᵀ: {rel:.2e} (float64 summation order)",
        ],
    )
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
