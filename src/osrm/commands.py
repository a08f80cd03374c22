"""Stage commands on the user's own artifacts: merge adapters, evaluate one model, rebuild a report.

These take parsed command-line arguments and touch paths; the work is done by library functions.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from osrm.adapters import load_adapter
from osrm.config import load_config
from osrm.errors import OsrmError
from osrm.evaluate import evaluate
from osrm.heads import head_outputs, swap_head
from osrm.merging import (
    MANIFEST_FILE,
    get_method,
    load_adapters,
    lora_deltas,
    read_manifest,
    save_merged_adapter,
    save_merged_model,
    validate_hyperparameters,
)
from osrm.merging.heads import read_head
from osrm.models import load_model, resolve_model
from osrm.report import read_interference, read_results
from osrm.rundir import run_dir_locked
from osrm.safety import require_safetensors
from osrm.stages.reporting import report_stage
from osrm.tasks import get_task


def resolve_adapter(name: str) -> str:
    """A local adapter directory, or (online only) a hub repository downloaded to the cache."""
    if Path(name).is_dir():
        return name
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise OsrmError(
            f"adapter {name!r}: no such directory, and HF_HUB_OFFLINE=1 forbids downloading it"
        )
    from huggingface_hub import snapshot_download

    patterns = ["adapter_config.json", "adapter_model.safetensors", "osrm_provenance.json"]
    return snapshot_download(name, allow_patterns=patterns)


def _hyperparameters(args: argparse.Namespace) -> dict:
    hp = {k: getattr(args, k) for k in ("scale", "density", "seed") if getattr(args, k) is not None}
    if getattr(args, "normalize", False):  # TIES/DARE-TIES: mergekit's weighted disjoint mean
        hp["normalize"] = True
    for item in args.hp:
        key, sep, raw = item.partition("=")
        if not sep:
            raise OsrmError(f"--hp {item!r}: expected key=value")
        hp[key] = yaml.safe_load(raw)
    return hp


def check_output(out: Path, force: bool) -> None:
    """``--out`` may be new, or (with ``--force``) an earlier ``osrm merge`` output: never a
    file or a folder that osrm did not write."""
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise OsrmError(f"--out {out} already exists; pass --force to replace it")
    if out.is_symlink() or not (out / MANIFEST_FILE).is_file():
        raise OsrmError(
            f"--out {out} exists and is not an osrm merge output (no {MANIFEST_FILE}); "
            "refusing to replace it, choose another --out"
        )


def merge(args: argparse.Namespace) -> dict:
    """``osrm merge``: a dense backbone (+ heads) or a LoRA adapter, with manifests."""
    out = Path(args.out)
    check_output(out, args.force)
    get_method(args.method)
    if args.weights is not None and len(args.weights) != len(args.adapters):
        raise OsrmError(
            f"--weights: expected {len(args.adapters)} values (one per adapter), "
            f"got {len(args.weights)}"
        )
    hp = _hyperparameters(args)
    try:
        validate_hyperparameters(args.method, hp, args.weights or [1.0] * len(args.adapters))
    except OsrmError as e:
        raise OsrmError(f"--method {args.method}: {e}") from None
    if (args.method == "regmean") != bool(args.stats):
        raise OsrmError("--stats (one statistics file per adapter) goes with --method regmean only")
    dirs = [resolve_adapter(a) for a in args.adapters]
    common = {"stats": args.stats, "tasks": args.tasks, **hp}
    if args.format == "lora":
        res = save_merged_adapter(dirs, out, args.method, args.weights, rank=args.rank, **common)
        worst = max(res.rel_errors.values(), default=0.0)
        return {"output": str(res.path), "format": "lora", "exact": res.exact,
                "max_rank": max(res.ranks.values()), "max_relative_error": worst}  # fmt: skip
    if args.rank is not None:
        raise OsrmError("--rank applies to --format lora only")
    sources = load_adapters(dirs)  # checked (same base, finite, manifests) before the model loads
    base = args.base or sources[0].base_model
    if not base:
        raise OsrmError(f"{dirs[0]}: adapter_config.json names no base model; pass --base")
    # the head drawn here is replaced by the first task's trained head before anything is saved
    model, _ = load_model(base, 2)
    save_merged_model(model, sources, out, args.method, args.weights, **common)
    return {
        "output": str(out),
        "format": "dense",
        "base_model": base,
        "manifest": str(out / MANIFEST_FILE),
    }


def eval_one(args: argparse.Namespace) -> dict:
    """``osrm eval --adapter DIR | --merged DIR --task T``: one model's metrics on one task."""
    if not args.task or bool(args.adapter) == bool(args.merged):
        raise OsrmError("evaluate one model with --task and exactly one of --adapter or --merged")
    spec = get_task(args.task)
    if args.adapter:
        adapter = resolve_adapter(args.adapter)
        require_safetensors(adapter)
        base = args.base or lora_deltas(adapter).base_model
        if not base:
            raise OsrmError(f"{adapter}: adapter_config.json names no base model; pass --base")
        model, tokenizer = load_model(base, spec.num_labels)
        model = load_adapter(model, adapter).eval()
    else:
        model, tokenizer = load_merged(args.merged, args.task, args.base)
    scores = evaluate(
        model, spec, args.split, tokenizer=tokenizer, max_length=args.max_length,
        batch_size=args.batch_size, seed=args.seed, max_examples=args.max_examples,
    )  # fmt: skip
    return {"task": args.task, "split": args.split, **scores}


def load_merged(merged: str | Path, task: str, base: str | None = None) -> tuple:
    """A merged output of ``osrm merge`` ready to score ``task``: (model, tokenizer).

    Dense: ``from_pretrained`` of the folder (its ``model.safetensors`` carries the first
    task's head), then ``task``'s head swapped in. LoRA: the base model, the merged adapter
    through ``PeftModel.from_pretrained`` (folded into the weights), then ``task``'s head.
    The tokenizer is the base model's (``--base``, else ``base_model`` of ``osrm_merge.json``).
    """
    manifest = read_manifest(merged)
    heads = manifest.get("heads") or {}
    if task not in heads:
        raise OsrmError(f"{merged}: no head for task {task!r}; heads: {sorted(heads)}")
    head = read_head(merged, task)  # a corrupt head fails here, before any model loads
    base = base or manifest.get("base_model")
    if not base:
        raise OsrmError(
            f"{Path(merged) / MANIFEST_FILE}: names no base_model (adapters of different or "
            "unnamed bases); pass --base"
        )
    if manifest.get("output") == "lora":
        inside = manifest.get("adapter_head")
        outputs = head_outputs(read_head(merged, inside)) if inside else head_outputs(head)
        model, tokenizer = load_model(base, outputs)
        model = load_adapter(model, merged).merge_and_unload()
    else:
        tokenizer = load_model_tokenizer(base)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(merged), use_safetensors=True
            )
        except (OSError, ValueError) as e:
            text = " ".join(str(e).split())[:300]
            raise OsrmError(f"{merged}: cannot load the merged model ({text})") from None
        model.config.pad_token_id = tokenizer.pad_token_id
    swap_head(model, head)
    return model.eval(), tokenizer


def load_model_tokenizer(base: str):
    """The base model's tokenizer, with ``pad = eos`` for decoders that have no pad token."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(base))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def report(run_dir: str | Path) -> dict:
    """``osrm report RUN_DIR``: rebuild the report from the run's config and results."""
    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise OsrmError(f"{run_dir}: not a run directory (no config.yaml)")
    cfg = load_config(config)
    results = read_results(run_dir / "results.jsonl")
    if not results:
        raise OsrmError(
            f"{run_dir}/results.jsonl: no results yet; run `osrm run` or `osrm eval` first"
        )
    inter = run_dir / "interference.json"
    matrices = read_interference(inter) if inter.is_file() else {}
    with run_dir_locked(run_dir):
        return report_stage(cfg, run_dir, results, matrices)["paths"]
