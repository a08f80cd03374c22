"""Every osrm command: the main job (statistics → OSRM bases → adapters → merges → evaluation →
report) and the commands on the user's own artifacts (merge adapters, evaluate one model,
rebuild a report).

Every stage reads and writes one run directory (:mod:`osrm.rundir`) and skips work whose
artifact already exists for the same inputs, so re-running a command after an interruption
continues where it stopped. Library modules take in-memory objects; only the stages
(:mod:`osrm.stages`), these recipes and the CLI touch paths.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from osrm import __version__, distributed
from osrm.adapters import load_adapter
from osrm.config import ExperimentConfig, load_config
from osrm.diagnostics import summarise_interference
from osrm.errors import OsrmError
from osrm.evaluate import evaluate
from osrm.merging import (
    MANIFEST_FILE,
    get_method,
    load_adapters,
    lora_deltas,
    methods_with,
    save_merged_adapter,
    save_merged_model,
    validate_hyperparameters,
)
from osrm.models import load_base, load_merged, load_model
from osrm.report import (
    markdown_table,
    read_budget_diagnostics,
    read_interference,
    read_results,
    subspace_table,
)
from osrm.rundir import (
    BUDGET_DIAGNOSTICS_FILE,
    CONFIG_FILE,
    INTERFERENCE_FILE,
    RESULTS_FILE,
    SUBSPACE_REPORT_FILE,
    discard_unverified_adapters,
    run_dir_locked,
    run_path,
    unlock_run_dir,
    write_json,
)
from osrm.safety import require_safetensors
from osrm.stages.evaluation import budget_stage, eval_stage, interference_stage
from osrm.stages.preparation import check_rank, prepare
from osrm.stages.reporting import report_stage, result_columns
from osrm.stages.statistics import stats_stage, subspace_stage
from osrm.stages.training import adapter_stage
from osrm.tasks.registry import get_task, task_spec

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
DEMO_QUICK_CONFIG = Path(__file__).with_name("demo-quick.yaml")
STAGES = ("stats", "train", "eval", "report")


def run(
    config: str | Path, overrides: list[str] | tuple[str, ...] = (), *, until: str = "report"
) -> dict:
    """Run the stages up to ``until`` (``stats``, ``train``, ``eval`` or ``report``)."""
    if until not in STAGES:
        raise OsrmError(f"until {until!r}: expected one of {list(STAGES)}")
    cfg = prepare(config, overrides)
    try:
        return _stages(cfg, until)
    finally:
        unlock_run_dir(Path(cfg.run_dir))


def _stages(cfg: ExperimentConfig, until: str) -> dict:
    run_dir = Path(cfg.run_dir)
    specs = {task: task_spec(cfg, task) for task in cfg.task_names}  # resolved once, here
    model, tokenizer = load_base(cfg)
    check_rank(cfg, model)
    stats, metas = stats_stage(cfg, run_dir, specs, model, tokenizer)
    del model  # the training and evaluation stages load their own
    bases, summary = subspace_stage(cfg, stats, metas)  # reused by the training stage
    write_json(
        run_path(run_dir, SUBSPACE_REPORT_FILE), {"osrm_version": __version__, "modes": summary}
    )
    d_in = next(iter(next(iter(stats.values())).values())).d_in
    table = subspace_table(summary, (cfg.lora.rank, d_in))
    out: dict = {"cfg": cfg, "run_dir": run_dir, "subspace_table": table}
    if until == "stats":
        return out
    if distributed.is_main():  # one process removes; the others wait for it
        discard_unverified_adapters(cfg, run_dir)
    distributed.barrier()
    adapters = adapter_stage(cfg, run_dir, specs, stats, metas, bases)
    out["adapters"] = adapters
    if until == "train":
        return out
    results = eval_stage(cfg, run_dir, specs, adapters)
    matrices = interference_stage(cfg, adapters, stats)
    write_json(run_path(run_dir, INTERFERENCE_FILE), matrices)
    out.update(results=results, interference=matrices)
    budgets = None
    if cfg.train.checkpoints:  # cheap: recomputed from the saved adapters on every run
        budgets = out["budgets"] = budget_stage(cfg, run_dir, adapters, stats, matrices)
        path = run_path(run_dir, BUDGET_DIAGNOSTICS_FILE)
        write_json(path, {"osrm_version": __version__, **budgets})
    if until == "eval":
        return out
    if distributed.is_main():  # the report is files only: one process writes it
        out["report"] = report_stage(cfg, run_dir, results, matrices, budgets)
    distributed.barrier()
    return out


def print_summary(out: dict) -> None:
    """The results table and where the report is (what `osrm run` and `osrm demo` print)."""
    cfg: ExperimentConfig = out["cfg"]
    report = out.get("report")
    if report is None:
        return
    print(f"\n{markdown_table(report['rows'], result_columns(cfg, report['rows']))}\n")
    means = summarise_interference(out["interference"])
    print(
        "mean cross-task interference ratio: " + ", ".join(f"{i} {v:.3f}" for i, v in means.items())
    )
    paths = report["paths"]
    print(f"report: {paths['html']} (tables: {paths['markdown']}, {paths['csv']})")


def demo(
    run_dir: str | None = None, overrides: list[str] | tuple[str, ...] = (), quick: bool = False
) -> dict:
    """The embedded default on real offline data; ``quick``: 3 tasks with small limits."""
    config = DEMO_QUICK_CONFIG if quick else DEMO_CONFIG
    out = run(config, [*overrides, *([f"run_dir={run_dir}"] if run_dir else [])])
    print_summary(out)
    return out


def report(run_dir: str | Path) -> dict:
    """``osrm report RUN_DIR``: rebuild the report from the run's config and results."""
    run_dir = Path(run_dir)
    config = run_dir / CONFIG_FILE
    if not config.is_file():
        raise OsrmError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    cfg = load_config(config)
    results = read_results(run_dir / RESULTS_FILE)
    if not results:
        raise OsrmError(
            f"{run_dir}/{RESULTS_FILE}: no results yet; run `osrm run` or `osrm eval` first"
        )
    inter = run_dir / INTERFERENCE_FILE
    matrices = read_interference(inter) if inter.is_file() else {}
    budget_file = run_dir / BUDGET_DIAGNOSTICS_FILE
    budgets = read_budget_diagnostics(budget_file) if budget_file.is_file() else None
    with run_dir_locked(run_dir):
        return report_stage(cfg, run_dir, results, matrices, budgets)["paths"]


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
    if get_method(args.method).needs_stats != bool(args.stats):
        raise OsrmError(
            "--stats (one statistics file per adapter) goes with --method "
            f"{methods_with('needs_stats')} only"
        )
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
