"""Benchmark: merge eight 8B-shaped LoRA adapters, dense and LoRA outputs, vs peft (issue 17).

A Llama-3-8B-shaped checkpoint (hidden 4096, intermediate 14336, 8 KV heads of 128, vocab
128256, bf16, one safetensors shard per layer + index) and 8 random rank-16 adapters on
q/k/v/o/gate/up/down (saved with peft) are written to a scratch folder; the weights are
synthetic (constant base, random factors): only shapes and bytes matter here. The same is
built with 16 layers, so that each output's peak memory can be seen to follow the largest
module (the same at 16 and 32 layers) or the model (doubling). Each measurement runs in a
fresh subprocess (allocator state never leaks between them):

* osrm dense: ``save_merged_checkpoint`` (what ``osrm merge --format dense`` does for headless
  adapters) streams base + merged ΔW from the base files to a new checkpoint;
* osrm lora: ``save_merged_adapter``, the exact concatenation (rank 8 × 16 = 128);
* peft: ``PeftModel.from_pretrained`` + ``load_adapter`` × 7 on a base stack whose weights are
  allocated but never touched (so they cost no resident memory; a real base would add its
  16 GB), then ``add_weighted_adapter(combination_type="cat")``, the exact equivalent of osrm
  lora. peft has no streamed dense output: its route is ``merge_and_unload`` on the loaded
  base, which needs the whole model resident (not run here: 16 GB in bf16).

Method: task arithmetic with weights 1/8 (the merged ΔW is what every linear method computes;
the non-linear ones add per-module work on the same k dense deltas). Peak memory: VmHWM
above the resident set before the section (as bench/merge_speed.py); time: wall clock.

    python bench/merge_speed_llm.py [--layers 32,16] [--scratch DIR] [--json out.json]

Needs about 3 × 16 GB of free disk at 32 layers (base, output, and the 16-layer base).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import common  # noqa: E402
from merge_speed import Peak  # noqa: E402

SHAPE = {"hidden": 4096, "intermediate": 14336, "kv": 1024, "vocab": 128256}
ATTN = {"q_proj": ("hidden", "hidden"), "k_proj": ("hidden", "kv"),
        "v_proj": ("hidden", "kv"), "o_proj": ("hidden", "hidden")}  # fmt: skip
MLP = {"gate_proj": ("hidden", "intermediate"), "up_proj": ("hidden", "intermediate"),
       "down_proj": ("intermediate", "hidden")}  # fmt: skip
TARGETS = [*ATTN, *MLP]
ADAPTERS, RANK = 8, 16


def _linear(d_in: int, d_out: int) -> nn.Linear:
    # skip_init: allocated, never written, so never resident (peft only needs the modules)
    return nn.utils.skip_init(nn.Linear, SHAPE[d_in], SHAPE[d_out], bias=False)


class Block(nn.Module):
    def __init__(self, modules: dict):
        super().__init__()
        for name, (d_in, d_out) in modules.items():
            setattr(self, name, _linear(d_in, d_out))


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn, self.mlp = Block(ATTN), Block(MLP)


class Stack(nn.Module):
    """The linear layers of a Llama-3-8B under Llama's parameter names."""

    def __init__(self, layers: int):
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(Layer() for _ in range(layers))


def write_base(path: Path, layers: int) -> int:
    """An 8B-shaped bf16 checkpoint folder, one shard per layer (+ embeddings, head); bytes."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    h, i, kv, v = (SHAPE[k] for k in ("hidden", "intermediate", "kv", "vocab"))
    LlamaConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=layers, vocab_size=v,
                num_attention_heads=32, num_key_value_heads=8, torch_dtype="bfloat16",
                ).save_pretrained(path)  # fmt: skip
    const = lambda *shape: torch.full(shape, 0.01, dtype=torch.bfloat16)  # noqa: E731
    shards = [{"model.embed_tokens.weight": const(v, h)}]
    for n in range(layers):
        p = f"model.layers.{n}."
        shard = {
            f"{p}input_layernorm.weight": const(h),
            f"{p}post_attention_layernorm.weight": const(h),
        }
        for block, modules in (("self_attn", ATTN), ("mlp", MLP)):
            for name, (d_in, d_out) in modules.items():
                shard[f"{p}{block}.{name}.weight"] = const(SHAPE[d_out], SHAPE[d_in])
        shards.append(shard)
    shards.append({"model.norm.weight": const(h), "lm_head.weight": const(v, h)})
    weight_map, total = {}, 0
    for k, shard in enumerate(shards, start=1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path / name, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(shard, name)
        total += sum(t.nbytes for t in shard.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return total


def write_adapters(root: Path, layers: int) -> list[str]:
    """8 random rank-16 peft adapters on the 7 projections (fp32 factors, B scaled small)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=TARGETS)
    model = get_peft_model(Stack(layers), cfg)
    g, dirs = torch.Generator().manual_seed(0), []
    for i in range(ADAPTERS):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5 * 0.1)
        path = root / f"task{i}"
        model.save_pretrained(str(path))
        dirs.append(str(path))
    return dirs


def run_job(job: dict) -> dict:
    """One measured section in this (fresh) process: seconds and peak MiB."""
    torch.set_num_threads(job["threads"])
    dirs, out, weights = job["dirs"], Path(job["out"]), [1.0 / ADAPTERS] * ADAPTERS
    peak = Peak()
    peak.start()
    if job["impl"] == "osrm-dense":
        from osrm.merging.checkpoint import save_merged_checkpoint

        save_merged_checkpoint(job["base"], dirs, out, "task_arithmetic", weights)
    elif job["impl"] == "osrm-lora":
        from osrm.merging import save_merged_adapter

        save_merged_adapter(dirs, out, "task_arithmetic", weights)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(Stack(job["layers"]), dirs[0], adapter_name="t0")
        for i, d in enumerate(dirs[1:], start=1):
            model.load_adapter(d, adapter_name=f"t{i}")
        names = [f"t{i}" for i in range(len(dirs))]
        model.add_weighted_adapter(names, weights, "merged", combination_type="cat")
    seconds, mib = peak.stop()
    written = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.exists() else 0
    return {"seconds": seconds, "peak_mib": mib, "written_bytes": written}


def spawn(job: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {job['impl']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def measure(scratch: Path, layers: int, threads: int) -> dict:
    """Build the base and adapters for ``layers``, run the three jobs, clean up."""
    root = scratch / f"l{layers}"
    (root / "base").mkdir(parents=True)
    base_bytes = write_base(root / "base", layers)
    dirs = write_adapters(root, layers)
    adapter_bytes = sum(f.stat().st_size for d in dirs for f in Path(d).iterdir())
    row = {"layers": layers, "base_bytes": base_bytes, "adapter_bytes": adapter_bytes}
    for impl in ("osrm-dense", "osrm-lora", "peft-cat"):
        job = {"impl": impl, "dirs": dirs, "base": str(root / "base"), "layers": layers,
               "out": str(root / "out"), "threads": threads}  # fmt: skip
        row[impl] = spawn(job)
        shutil.rmtree(root / "out", ignore_errors=True)
        print(f"{layers} layers {impl}: {row[impl]}", flush=True)
    shutil.rmtree(root)
    return row


def table(rows: list[dict]) -> str:
    gib = 2**30
    lines = ["| layers | base GiB | 8 adapters GiB | output | seconds | peak MiB |", "|---|" * 6]
    for r in rows:
        for impl in ("osrm-dense", "osrm-lora", "peft-cat"):
            m = r[impl]
            lines.append(f"| {r['layers']} | {r['base_bytes'] / gib:.1f} | "
                         f"{r['adapter_bytes'] / gib:.2f} | {impl} | {m['seconds']:.1f} | "
                         f"{m['peak_mib']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = common.new_parser(__doc__)
    parser.add_argument("--layers", default="32,16", help="comma-separated layer counts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every worker")
    parser.add_argument("--scratch", help="folder for the synthetic checkpoints (default: tmp)")
    common.add_json(parser, help="also write the raw numbers here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_job(json.loads(args.worker))))
        return
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        rows = [measure(Path(scratch), int(n), args.threads) for n in args.layers.split(",")]
    print(table(rows))
    common.write_json(args.json, {"args": vars(args), "shape": SHAPE, "adapters": ADAPTERS,
                                  "rank": RANK, "targets": TARGETS, "rows": rows,
                                  "load_average": [load_before, os.getloadavg()[0]],
                                  "environment": common.environment()})  # fmt: skip


if __name__ == "__main__":
    main()
