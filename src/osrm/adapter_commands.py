"""The commands on the user's own adapters: ``osrm merge``, ``osrm retrofit``,
``osrm eval --adapter/--merged`` and ``osrm predict``. Like :mod:`osrm.pipeline`'s recipes, they
check every argument before anything is written."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import yaml

from osrm.adapters import load_adapter
from osrm.artifacts import atomic_file
from osrm.errors import OsrmError
from osrm.evaluate import evaluate
from osrm.heads import adapter_head
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
from osrm.merging.auto_weights import AUTO_MODES
from osrm.merging.checkpoint import save_merged_checkpoint
from osrm.models import load_model
from osrm.predictor import load_merged
from osrm.retrofit import RETROFIT_FILE, retrofit_adapters
from osrm.safety import check_name, require_safetensors
from osrm.tasks.registry import TASKS, get_task
from osrm.tasks.sources import read_table


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


def hyperparameters_from(args: argparse.Namespace) -> dict:
    hp = {k: getattr(args, k) for k in ("scale", "density", "seed") if getattr(args, k) is not None}
    if getattr(args, "normalize", False):  # TIES/DARE-TIES: mergekit's weighted disjoint mean
        hp["normalize"] = True
    for item in args.hp:
        key, sep, raw = item.partition("=")
        if not sep:
            raise OsrmError(f"--hp {item!r}: expected key=value")
        hp[key] = yaml.safe_load(raw)
    return hp


def check_output(out: Path, force: bool, ours: Callable[[Path], bool], what: str) -> None:
    """``--out`` may be new, or (with ``--force``) an earlier output of this command (``ours``
    says so; ``what`` names it): never a file or a folder that osrm did not write."""
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise OsrmError(f"--out {out} already exists; pass --force to replace it")
    if out.is_symlink() or not ours(out):
        raise OsrmError(
            f"--out {out} exists and is not {what}; refusing to replace it, choose another --out"
        )


def merge_output(out: Path) -> bool:
    return (out / MANIFEST_FILE).is_file()


def retrofit_output(out: Path) -> bool:
    return out.is_dir() and all((d / RETROFIT_FILE).is_file() for d in out.iterdir() if d.is_dir())


def merge_weights(values: list | None, k: int) -> list[float] | str | None:
    """``--weights``: k numbers, or one of ``auto`` / ``auto-per-module`` alone."""
    if values is None:
        return None
    modes = [v for v in values if isinstance(v, str)]
    if modes:
        if len(values) != 1:
            raise OsrmError(f"--weights {modes[0]}: give it alone, not with other values")
        return modes[0]
    if len(values) != k:
        raise OsrmError(f"--weights: expected {k} values (one per adapter), got {len(values)}")
    return values


def merge(args: argparse.Namespace) -> dict:
    """``osrm merge``: a dense backbone (+ heads) or a LoRA adapter, with manifests."""
    out = Path(args.out)
    check_output(out, args.force, merge_output, f"an osrm merge output (no {MANIFEST_FILE})")
    get_method(args.method)
    weights = merge_weights(args.weights, len(args.adapters))
    hp = hyperparameters_from(args)
    try:
        numeric = [1.0] * len(args.adapters) if isinstance(weights, str) else weights
        validate_hyperparameters(args.method, hp, numeric or [1.0] * len(args.adapters))
    except OsrmError as e:
        raise OsrmError(f"--method {args.method}: {e}") from None
    if (get_method(args.method).needs_stats or isinstance(weights, str)) != bool(args.stats):
        raise OsrmError(
            "--stats (one statistics file per adapter) goes with --method "
            f"{methods_with('needs_stats')} or --weights {' / '.join(AUTO_MODES)}, and only there"
        )
    dirs = [resolve_adapter(a) for a in args.adapters]
    common = {"stats": args.stats, "tasks": args.tasks, **hp}
    if args.format == "lora":
        res = save_merged_adapter(dirs, out, args.method, weights, rank=args.rank, **common)
        worst = max(res.rel_errors.values(), default=0.0)
        return {"output": str(res.path), "format": "lora", "exact": res.exact,
                "max_rank": max(res.ranks.values()), "max_relative_error": worst}  # fmt: skip
    if args.rank is not None:
        raise OsrmError("--rank applies to --format lora only")
    sources = load_adapters(dirs)  # checked (same base, finite, manifests) before the model loads
    base = args.base or sources[0].base_model
    if not base:
        raise OsrmError(f"{dirs[0]}: adapter_config.json names no base model; pass --base")
    if any(s.head_keys for s in sources):
        # the head drawn here is replaced by the first task's trained head before it is saved
        model, _ = load_model(base, 2)
        save_merged_model(model, sources, out, args.method, weights, **common)
    else:  # adapters of generative tasks (no head): the causal LM, streamed file to file
        save_merged_checkpoint(base, sources, out, args.method, weights, **common)
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
    adapter = resolve_adapter(args.adapter) if args.adapter else None
    if adapter:
        require_safetensors(adapter)
        deltas = lora_deltas(adapter)
    if adapter and not deltas.provenance.get("prompt"):  # a classifier (generative: below)
        adapter_head(adapter)  # a headless adapter without a recorded prompt: one line, here
        base = args.base or deltas.base_model
        if not base:
            raise OsrmError(f"{adapter}: adapter_config.json names no base model; pass --base")
        model, tokenizer = load_model(base, spec.num_labels)
        model = load_adapter(model, adapter).eval()
        context = contextlib.nullcontext(model)
    else:  # a merge, or a generative adapter: answered through the predictor
        merged = load_merged(adapter or args.merged, args.base)
        spec = merged.task_spec(spec)  # a generative model answers from its recorded prompt
        context, tokenizer = merged.for_task(args.task), merged.tokenizer
    with context as model:
        scores = evaluate(
            model, spec, args.split, tokenizer=tokenizer, max_length=args.max_length,
            batch_size=args.batch_size, seed=args.seed, max_examples=args.max_examples,
        )  # fmt: skip
    return {"task": args.task, "split": args.split, **scores}


def named_adapters(items: list[str]) -> tuple[list[str], list[str] | None]:
    """``DIR`` or ``TASK=DIR`` arguments -> directories and task names (None: from the
    adapters); naming some but not all is refused."""
    dirs, names = [], []
    for item in items:
        name, sep, path = item.partition("=")
        if sep and not Path(item).exists():
            names.append(check_name(name, f"adapter {item!r}: task name"))
            dirs.append(path)
        else:
            dirs.append(item)
    if names and len(names) != len(items):
        raise OsrmError("adapters: name every adapter as TASK=DIR, or none")
    return dirs, names or None


def retrofit(args: argparse.Namespace) -> dict:
    """``osrm retrofit``: one merge-ready adapter per input under ``--out/<task>``."""
    out = Path(args.out)
    check_output(out, args.force, retrofit_output, "an osrm retrofit output")
    dirs, tasks = named_adapters(args.adapters)
    records = retrofit_adapters([resolve_adapter(d) for d in dirs], args.stats, args.mu, out, tasks)
    return {task: {"output": str(out / task), **r["overall"]} for task, r in records.items()}


def predict(args: argparse.Namespace) -> dict:
    """``osrm predict MODEL --task T --input FILE --out FILE``: one JSON line per input row."""
    out = Path(args.out)
    if out.exists() and not args.force:
        raise OsrmError(f"--out {out}: exists; pass --force to replace it")
    table = read_table(args.input)
    fields = args.text_field or default_text_fields(list(table.columns), args.task, args.input)
    spec = TASKS.get(args.task)
    if spec and len(fields) != len(spec.text_fields):
        raise OsrmError(f"--text-field: task {args.task!r} reads {len(spec.text_fields)} text "
                        f"field(s) per example, got {fields}")  # fmt: skip
    texts = [_texts(table, f, args.input) for f in fields]
    model = load_merged(args.model, args.base)
    model.labels(model.check_task(args.task), args.labels)  # both checked before predicting
    records = model.predict(
        texts[0], args.task, text_pairs=texts[1] if len(texts) > 1 else None,
        label_names=args.labels, batch_size=args.batch_size, max_length=args.max_length,
        progress=True,
    )  # fmt: skip
    with atomic_file(out) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    counts = dict(Counter(r["label"] for r in records if "label" in r))
    return {"model": str(args.model), "kind": model.kind, "task": args.task,
            "predictions": len(records), "labels": counts, "out": str(out)}  # fmt: skip


def default_text_fields(columns: list[str], task: str, path: str) -> list[str]:
    """``text`` (with ``text_pair`` when present), else the built-in task's own columns."""
    spec = TASKS.get(task)
    if "text" in columns:
        return ["text", *(["text_pair"] if "text_pair" in columns else [])]
    if spec and set(spec.text_fields) <= set(columns):
        return list(spec.text_fields)
    raise OsrmError(f"{path}: no 'text' column; name the text column(s) with --text-field "
                    f"(columns: {columns})")  # fmt: skip


def _texts(table, field: str, path: str) -> list[str]:
    """The strings of column ``field``; a missing column or an empty cell is refused."""
    if field not in table.columns:
        raise OsrmError(f"{path}: no column {field!r} (columns: {list(table.columns)})")
    values = table[field].tolist()
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v.strip():
            missing = v is None or v != v  # pandas reads an empty cell as NaN
            shown = "empty" if isinstance(v, str) else "missing" if missing else repr(v)
            raise OsrmError(f"{path}: row {i + 1}: {field!r} is {shown}, expected non-empty text")
    if not values:
        raise OsrmError(f"{path}: holds no rows")
    return values
