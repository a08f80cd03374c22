"""The recipe: stages that read and write a run directory, each skipping finished work.

Library modules take in-memory objects; only this module (and the CLI) touch paths.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from torch import nn
from transformers import PreTrainedTokenizerBase

from osrm import __version__
from osrm.adapters import RECORD_FILE, Provenance, attach_lora, save_adapter
from osrm.atomic import atomic_file
from osrm.config import ExperimentConfig, dump_config, load_config
from osrm.data import batches, encode
from osrm.diagnostics import subspace_report, summarise_report
from osrm.errors import OsrmError
from osrm.evaluate import evaluate
from osrm.models import load_model
from osrm.report import markdown_table
from osrm.stats import (
    LayerStats,
    StatsMeta,
    collect_stats,
    find_target_modules,
    load_stats,
    save_stats,
    stats_digest,
    weight_fingerprint,
)
from osrm.subspace import osrm_bases
from osrm.tasks import TaskSpec, get_task, load_task, task_from_dict
from osrm.train import train

log = logging.getLogger(__name__)
DEMO_CONFIG = Path(__file__).with_name("demo.yaml")

TaskStats = dict[str, dict[str, LayerStats]]


def task_spec(cfg: ExperimentConfig, name: str) -> TaskSpec:
    """The spec of a configured task: a registry entry or the user's block."""
    for entry in cfg.tasks:
        if entry == name:
            return get_task(name)
        if isinstance(entry, dict) and entry.get("name") == name:
            return task_from_dict(entry)
    raise OsrmError(f"task {name!r} is not in the config's tasks {cfg.task_names}")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OsrmError(f"model.device {name!r}: no CUDA device is available")
    return torch.device(name)


def load_base(
    cfg: ExperimentConfig, num_labels: int = 2
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The frozen base model on its device, and the tokenizer."""
    model, tokenizer = load_model(
        cfg.model.name,
        num_labels,
        dtype=getattr(torch, cfg.model.dtype),
        trust_remote_code=cfg.model.trust_remote_code,
    )
    return model.to(resolve_device(cfg.model.device)).eval(), tokenizer


def stats_stage(
    cfg: ExperimentConfig, run_dir: Path, model: nn.Module, tokenizer: PreTrainedTokenizerBase
) -> tuple[TaskStats, dict[str, StatsMeta]]:
    """Statistics of every task: reuse ``stats/<task>.safetensors`` if it matches, else collect."""
    names = find_target_modules(model, cfg.lora.target_modules)
    fingerprint = weight_fingerprint(model, names)
    stats_by_task, metas = {}, {}
    for task in cfg.task_names:
        path = run_dir / "stats" / f"{task}.safetensors"
        data = load_task(
            task_spec(cfg, task), "train", seed=cfg.seed, max_examples=cfg.stats.examples
        )
        expected = StatsMeta(
            base_model=cfg.model.name, fingerprint=fingerprint, task=task,
            n_examples=len(data), n_tokens=-1, max_length=cfg.stats.max_length, mask=cfg.stats.mask,
        )  # fmt: skip
        if path.is_file():
            stats, meta = load_stats(path)
            if _same_inputs(meta, expected) and set(stats) == set(names):
                log.info("statistics for %s: reusing %s", task, path)
                stats_by_task[task], metas[task] = stats, meta
                continue
            log.info("statistics for %s: %s is stale, recomputing", task, path)
        enc = encode(data, tokenizer, cfg.stats.max_length)
        loader = batches(enc, tokenizer, cfg.stats.batch_size)
        stats = collect_stats(model, loader, cfg.lora.target_modules, mask=cfg.stats.mask)
        meta = StatsMeta(**{**asdict(expected), "n_tokens": next(iter(stats.values())).count})
        save_stats(path, stats, meta)
        stats_by_task[task], metas[task] = stats, meta
    return stats_by_task, metas


def _same_inputs(meta: StatsMeta, expected: StatsMeta) -> bool:
    keys = ("fingerprint", "task", "n_examples", "max_length", "mask", "base_model")
    return all(getattr(meta, k) == getattr(expected, k) for k in keys)


def subspace_stage(
    cfg: ExperimentConfig, stats_by_task: TaskStats, metas: dict[str, StatsMeta]
) -> dict[str, list[dict]]:
    """OSRM bases of every task in every configured mode, summarised per task."""
    sub = cfg.subspace
    out = {}
    for mode in sub.modes:
        bases = {
            task: osrm_bases(
                stats_by_task,
                task,
                cfg.lora.rank,
                mode,
                weighting=sub.weighting,
                center=sub.center,
                basis=sub.basis,
                ridge=sub.ridge,
                seed=cfg.seed,
                metas=metas,
            )  # fmt: skip
            for task in cfg.task_names
        }
        energies, overlaps = subspace_report(
            stats_by_task, bases, weighting=sub.weighting, center=sub.center, seed=cfg.seed
        )
        out[mode] = summarise_report(energies, overlaps)
    return out


def lora_config(cfg: ExperimentConfig) -> LoraConfig:
    """The peft config of every adapter in the experiment (head kept via modules_to_save)."""
    return LoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="SEQ_CLS",
    )


def run_fingerprint(cfg: ExperimentConfig, *parts: object) -> str:
    """Hash of what determines an artifact: model, LoRA and training settings, seed, parts."""
    payload = [cfg.model.model_dump(), cfg.lora.model_dump(), cfg.train.model_dump(), cfg.seed]
    blob = json.dumps([*payload, *map(str, parts)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# init name -> OSRM subspace mode (None: peft's default LoRA init)
INIT_MODES = {"lora": None, "osrm": "cov", "osrm_mean": "mean", "contrast": "contrast"}


def init_bases(
    cfg: ExperimentConfig,
    init: str,
    task: str,
    stats_by_task: TaskStats,
    metas: dict[str, StatsMeta],
) -> tuple[dict[str, torch.Tensor] | None, Provenance]:
    """The initial A of ``task``'s adapter for ``init``, and its provenance."""
    mode = INIT_MODES[init]
    sub = cfg.subspace
    options = {
        "weighting": sub.weighting,
        "center": sub.center,
        "basis": sub.basis,
        "ridge": sub.ridge,
    }
    prov = Provenance(
        task=task, init=init, rank=cfg.lora.rank, mode=mode, options=options if mode else {},
        stats_digests={t: stats_digest(s) for t, s in stats_by_task.items()} if mode else {},
        base_fingerprint=metas[task].fingerprint if task in metas else None,
        freeze_a=cfg.train.freeze_a,
    )  # fmt: skip
    if mode is None:
        return None, prov
    bases = osrm_bases(
        stats_by_task, task, cfg.lora.rank, mode, seed=cfg.seed, metas=metas, **options
    )
    return bases, prov


def adapter_stage(
    cfg: ExperimentConfig, run_dir: Path, stats_by_task: TaskStats, metas: dict[str, StatsMeta]
) -> dict[tuple[str, str], Path]:
    """Train every (init, task) adapter into ``adapters/<init>/<task>``, skipping finished ones.

    An adapter directory counts as finished when its training record matches this config.
    """
    out = {}
    for init in cfg.lora.inits:
        for task in cfg.task_names:
            path = run_dir / "adapters" / init / task
            bases, prov = init_bases(cfg, init, task, stats_by_task, metas)
            record = path / RECORD_FILE
            expected = run_fingerprint(cfg, task, init, prov)
            if record.is_file() and json.loads(record.read_text()).get("fingerprint") == expected:
                log.info("adapter %s/%s: reusing %s", init, task, path)
            else:
                log.info("adapter %s/%s: training", init, task)
                train_task(cfg, task, path, bases=bases, provenance=prov)
            out[init, task] = path
    return out


def train_task(
    cfg: ExperimentConfig,
    task: str,
    out_dir: Path,
    *,
    bases: dict[str, torch.Tensor] | None = None,
    provenance: Provenance | None = None,
    progress: bool = True,
) -> dict:
    """Train one task's adapter (peft default init, or OSRM ``bases``) and save it atomically.

    The base model and head are drawn with ``cfg.seed``, so every init of a task starts from
    the same head and sees the same batches. Checkpoints go to ``.<out_dir>.ckpt`` beside the
    adapter and are removed once the adapter is saved.
    """
    spec = task_spec(cfg, task)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_base(cfg, spec.num_labels)
    init = provenance.init if provenance else ("osrm" if bases is not None else "lora")
    peft_model = attach_lora(model, lora_config(cfg), bases=bases, freeze_a=cfg.train.freeze_a)
    data = load_task(spec, "train", seed=cfg.seed, max_examples=cfg.train.max_train_examples)
    encoded = encode(data, tokenizer, cfg.train.max_length)
    micro = cfg.train.batch_size // cfg.train.grad_accum

    def epoch_batches(epoch: int):
        return batches(
            encoded, tokenizer, micro, shuffle=True, seed=cfg.seed * 100_003 + epoch,
            group_by_length=cfg.train.group_by_length,
        )  # fmt: skip

    ckpt = out_dir.parent / f".{out_dir.name}.ckpt"
    fingerprint = run_fingerprint(cfg, task, init, provenance)
    result = train(peft_model, epoch_batches, cfg.train, checkpoint_dir=ckpt,
                   fingerprint=fingerprint, progress=progress)  # fmt: skip
    record = {
        "task": task, "init": init, "seed": cfg.seed, "model": cfg.model.name,
        "train": cfg.train.model_dump(), "lora": cfg.lora.model_dump(),
        "train_examples": len(data), "steps": result.steps, "seconds": result.seconds,
        "tokens": result.tokens, "resumed_from": result.resumed_from, "losses": result.losses,
        "fingerprint": fingerprint, "osrm_version": __version__,
    }  # fmt: skip
    save_adapter(peft_model, out_dir, provenance, record)
    shutil.rmtree(ckpt, ignore_errors=True)
    return record


def load_adapter_model(cfg: ExperimentConfig, adapter_dir: Path, task: str):
    """Base model + saved adapter (with its head) through vanilla ``PeftModel.from_pretrained``."""
    model, tokenizer = load_base(cfg, task_spec(cfg, task).num_labels)
    return PeftModel.from_pretrained(model, str(adapter_dir)).eval(), tokenizer


def eval_task(cfg: ExperimentConfig, model: nn.Module, tokenizer, task: str) -> dict[str, float]:
    """Metrics of ``model`` on ``task``'s evaluation split as configured."""
    return evaluate(
        model,
        task_spec(cfg, task),
        cfg.eval.split,
        tokenizer=tokenizer,
        max_length=cfg.train.max_length,
        batch_size=cfg.eval.batch_size,
        seed=cfg.seed,
        max_examples=cfg.eval.max_eval_examples,
    )


def write_json(path: Path, data: object) -> None:
    """JSON artifact, written atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def subspace_table(summary: dict[str, list[dict]], dims: tuple[int, int]) -> str:
    """Markdown: per mode, mean over tasks of the captured energies (%) and the overlap."""
    rows = []
    for mode, per_task in summary.items():
        mean = {k: sum(r[k] for r in per_task) / len(per_task) for k in per_task[0] if k != "task"}
        rows.append(
            {"mode": mode, **{k: 100 * v if k != "overlap" else v for k, v in mean.items()}}
        )
    # for random subspaces E‖A_i A_jᵀ‖²_F / r = r / d
    rank, d_in = dims
    rows.append({"mode": "random A", "other": rows[0]["other_random"],
                 "own": rows[0]["own_random"], "overlap": rank / d_in})  # fmt: skip
    columns = {
        "mode": "A init",
        "other": "other tasks' energy %",
        "own": "own task's energy %",
        "overlap": "overlap between tasks",
    }
    return markdown_table(rows, columns)


def demo(run_dir: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> None:
    """The embedded default: statistics and OSRM subspaces of real tasks on all-MiniLM-L6-v2."""
    cfg = load_config(DEMO_CONFIG, [*overrides, *([f"run_dir={run_dir}"] if run_dir else [])])
    out = Path(cfg.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "config.yaml") as tmp:
        tmp.write_text(dump_config(cfg))
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_base(cfg)
    stats_by_task, metas = stats_stage(cfg, out, model, tokenizer)
    summary = subspace_stage(cfg, stats_by_task, metas)
    write_json(out / "subspace_report.json", {"osrm_version": __version__, "modes": summary})
    d_in = next(iter(next(iter(stats_by_task.values())).values())).d_in
    print(
        f"\nOSRM subspaces, rank {cfg.lora.rank} of d_in {d_in}, {len(cfg.tasks)} tasks "
        f"({', '.join(cfg.task_names)}), mean over tasks and {cfg.lora.target_modules} modules:\n"
    )
    print(subspace_table(summary, (cfg.lora.rank, d_in)))
    print(f"\nartifacts: {out}/stats/*.safetensors, {out}/subspace_report.json")
