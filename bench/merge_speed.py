"""Benchmark: merge 8 random rank-8 LoRA adapters into one adapter, osrm vs peft, same files.

A Llama-3.2-1B-shaped stack (16 layers, hidden 2048, q_proj 2048→2048, v_proj 2048→512 with
GQA) carries 8 random rank-8 LoRA adapters on q/v, saved with peft. Each (implementation,
method) then runs in a fresh subprocess, so allocator state never leaks between runs:

* osrm: ``save_merged_adapter`` from the adapter directories to a written adapter (exact
  concatenation for the linear methods, else the merged ΔW truncated to rank 8), streaming
  module by module, no base model. "cold" is the first run in the process; ``--warm`` adds the
  best of 3 repeats, the fair match for peft's "merge";
* peft: ``PeftModel.from_pretrained`` + ``load_adapter`` × 7 on the base stack, then
  ``add_weighted_adapter`` with the closest combination type (``cat``, ``linear``,
  ``ties_svd``, ``dare_ties_svd``; svd rank = 8). "merge" times only that call, "total"
  includes building the base stack and loading the adapters, which peft needs.

Not included: ``regmean`` (it needs 8 statistics files of 2048² Gram matrices per layer).
Wall time: ``time.perf_counter`` around the measured section (imports excluded). Peak memory:
the kernel's peak resident set (``VmHWM``), reset through ``/proc/self/clear_refs`` right
before the section, minus the resident set at that moment: every byte the section touched,
allocator overhead included. "rel err" compares one module's merged ΔW (layer 0 q_proj)
with the exact dense merge of the same method (n/a for random drops).

    python bench/merge_speed.py [--threads N] [--warm] [--methods ties,...] [--json out.json]

On a busy machine use ``--threads 1``: with 2 threads competing for 2 cores, OpenMP's spinning
made one 2048² SVD take ~50 s instead of ~1 s in our runs, which flatters osrm unfairly.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import common  # noqa: E402

MODULE = "model.layers.0.self_attn.q_proj"
# osrm method -> (hyperparameters, closest peft combination types)
PAIRS = {
    "task_arithmetic": ({}, ["cat", "linear"]),
    "ties": ({"density": 0.2}, ["ties_svd"]),
    "dare_ties": ({"density": 0.5, "seed": 0}, ["dare_ties_svd"]),
    "weight_average": ({}, []),
    "dare_linear": ({"density": 0.5, "seed": 0}, []),
    "magnitude_prune": ({"density": 0.2}, []),
    "breadcrumbs": ({"density": 0.2, "gamma": 0.01}, []),
    "knots": ({"density": 0.2}, []),
    "tsv": ({}, []),
}


class Attention(nn.Module):
    def __init__(self, hidden: int, kv: int):
        super().__init__()
        # skip_init: the base values never matter here, only their memory
        self.q_proj = nn.utils.skip_init(nn.Linear, hidden, hidden, bias=False)
        self.v_proj = nn.utils.skip_init(nn.Linear, hidden, kv, bias=False)


class Layer(nn.Module):
    def __init__(self, hidden: int, kv: int):
        super().__init__()
        self.self_attn = Attention(hidden, kv)


class Stack(nn.Module):
    """The q/v projections of a Llama stack under Llama's parameter names."""

    def __init__(self, layers: int, hidden: int, kv: int):
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(Layer(hidden, kv) for _ in range(layers))


# ---------------------------------------------------------------- memory


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class Peak:
    """Peak resident set above the level at ``start()`` (Linux VmHWM, reset via clear_refs)."""

    def start(self) -> None:
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        self.base, self.t0 = _status("VmRSS"), time.perf_counter()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.t0, (_status("VmHWM") - self.base) / 2**20


# ---------------------------------------------------------------- workers


def make_adapters(root: Path, k: int, layers: int, hidden: int, kv: int, rank: int) -> list[str]:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(Stack(layers, hidden, kv), cfg)
    dirs = []
    g = torch.Generator().manual_seed(0)
    for i in range(k):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        path = root / f"task{i}"
        model.save_pretrained(str(path))
        dirs.append(str(path))
    return dirs


def rel_err(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(approx - exact) / torch.linalg.matrix_norm(exact))


def run_osrm(job: dict) -> dict:
    """The merge run cold (first in the process: time and peak memory), then 3 warm repeats.

    peft's "merge" number is warm (its process already loaded the adapters), so the best warm
    time is the one to compare with it; the cold run compares with peft's "total". A warm run's
    peak is not measured: the allocator reuses what the cold run freed.
    """
    from osrm.merging import METHODS, save_merged_adapter

    hp, peak, result = PAIRS[job["method"]][0], Peak(), {}
    rank = None if METHODS[job["method"]].linear else job["rank"]  # linear: exact, rank Σ r_i
    warm = []
    with tempfile.TemporaryDirectory() as out:
        for run in range(4 if job["warm"] else 1):
            peak.start()
            report = save_merged_adapter(
                job["dirs"], Path(out) / str(run), job["method"], job["weights"], rank=rank, **hp
            )
            seconds, mib = peak.stop()
            if run == 0:
                result["cold_seconds"], result["peak_mib"] = seconds, mib
            else:
                warm.append(seconds)
    result["warm_seconds"] = min(warm) if warm else None
    result["rel_err"] = report.rel_errors[MODULE + ".weight"]
    return result


def run_peft(job: dict) -> dict:
    from peft import PeftModel
    from peft.utils import merge_utils

    peak = Peak()
    peak.start()
    base = Stack(job["layers"], job["hidden"], job["kv"])
    model = PeftModel.from_pretrained(base, job["dirs"][0], adapter_name="t0")
    for i, d in enumerate(job["dirs"][1:], start=1):
        model.load_adapter(d, adapter_name=f"t{i}")
    load_s, load_mib = peak.stop()  # read before the merge's reset clears this peak
    names = [f"t{i}" for i in range(len(job["dirs"]))]
    density = {"ties_svd": 0.2, "dare_ties_svd": 0.5}.get(job["peft"])
    merge_peak = Peak()
    merge_peak.start()
    model.add_weighted_adapter(
        names,
        job["weights"],
        "merged",
        combination_type=job["peft"],
        svd_rank=job["rank"],
        density=density,
    )
    merge_s, merge_mib = merge_peak.stop()
    total_s, after_mib = peak.stop()  # VmHWM now covers the merge only: combine with loading
    total_mib = max(load_mib, after_mib)
    layer = model.base_model.model.get_submodule(MODULE)
    deltas = [layer.get_delta_weight(n) for n in names]
    w = torch.tensor(job["weights"])
    exact = {
        "cat": merge_utils.task_arithmetic,
        "linear": merge_utils.task_arithmetic,
        "ties_svd": lambda d, w: merge_utils.ties(d, w, 0.2),
    }.get(job["peft"])
    err = rel_err(layer.get_delta_weight("merged"), exact(deltas, w)) if exact else None
    return {
        "seconds": merge_s,
        "peak_mib": merge_mib,
        "total_seconds": total_s,
        "total_peak_mib": total_mib,
        "load_seconds": load_s,
        "rel_err": err,
    }


def worker(job: dict) -> None:
    torch.set_num_threads(job["threads"])
    result = run_osrm(job) if job["impl"] == "osrm" else run_peft(job)
    print("RESULT " + json.dumps(result))


def spawn(job: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"worker {job['impl']}/{job.get('peft', job['method'])} failed:\n{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


# ---------------------------------------------------------------- driver


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs > 0 else "n/a"


def table(rows: list[dict]) -> str:
    head = (
        "| osrm method | osrm s cold (warm) | osrm peak MiB | osrm rel err | peft type "
        "| peft s total (merge) | peft peak MiB total (merge) | peft rel err "
        "| time ratio cold/total (warm/merge) | memory ratio vs total (merge) |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        o, p = r["osrm"], r.get("peft")
        ours = (
            f"| {r['method']} | {fmt(o['cold_seconds'])} ({fmt(o['warm_seconds'])}) | "
            f"{fmt(o['peak_mib'], '.0f')} | {fmt(o['rel_err'], '.3g')} |"
        )
        if p is None:
            lines.append(ours + " — | — | — | — | — | — |")
            continue
        warm = _ratio(o["warm_seconds"], p["seconds"]) if o["warm_seconds"] else "n/a"
        lines.append(
            f"{ours} {r['peft_type']} | {fmt(p['total_seconds'])} ({fmt(p['seconds'])}) | "
            f"{fmt(p['total_peak_mib'], '.0f')} ({fmt(p['peak_mib'], '.0f')}) | "
            f"{fmt(p['rel_err'], '.3g')} | {_ratio(o['cold_seconds'], p['total_seconds'])} "
            f"({warm}) | {_ratio(o['peak_mib'], p['total_peak_mib'])} "
            f"({_ratio(o['peak_mib'], p['peak_mib'])}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = common.new_parser(__doc__)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--kv", type=int, default=512, help="v_proj output size (GQA)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--methods", default=",".join(PAIRS), help="comma-separated osrm methods")
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch threads in every worker (1 is steadier on a busy machine)",
    )
    parser.add_argument(
        "--warm", action="store_true", help="also time 3 warm repeats of each osrm merge"
    )
    common.add_json(parser, help="also write the raw numbers here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    threads = args.threads
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as root:
        dirs = make_adapters(
            Path(root), args.adapters, args.layers, args.hidden, args.kv, args.rank
        )
        job = {
            "dirs": dirs,
            "weights": [1.0 / args.adapters] * args.adapters,
            "rank": args.rank,
            "layers": args.layers,
            "warm": args.warm,
            "hidden": args.hidden,
            "kv": args.kv,
            "threads": threads,
        }
        rows = []
        for method in args.methods.split(","):
            osrm = spawn({**job, "impl": "osrm", "method": method})
            peft_types = PAIRS[method][1] or [None]
            for peft_type in peft_types:
                row = {"method": method, "osrm": osrm, "peft_type": peft_type}
                if peft_type:
                    row["peft"] = spawn(
                        {**job, "impl": "peft", "method": method, "peft": peft_type}
                    )
                rows.append(row)
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    load = (load_before[0], os.getloadavg()[0])
    print(
        f"\n{args.adapters} adapters, rank {args.rank}, {args.layers} layers, hidden "
        f"{args.hidden}, q+v; {threads} threads; torch {torch.__version__}; 1-min load "
        f"average {load[0]:.1f} before, {load[1]:.1f} after (other processes compete)\n"
    )
    print(table(rows))
    print(
        "\nosrm: adapters on disk -> adapter written; cold = first run in a fresh process, "
        "warm = best of 3 repeats (with --warm). peft total: build base + load the adapters + "
        "add_weighted_adapter; merge: add_weighted_adapter alone (warm). Peak = VmHWM above "
        "the level before the measured section; rel err = ||ΔW_out - ΔW_exact||_F / "
        f"||ΔW_exact||_F for {MODULE} (exact = dense merge by the same method)"
    )
    common.write_json(args.json, {"args": vars(args), "load_average": load, "rows": rows})


if __name__ == "__main__":
    main()
