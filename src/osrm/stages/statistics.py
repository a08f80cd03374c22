"""Stage 1: activation statistics per task (reused when their inputs match), OSRM diagnostics."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from osrm import distributed
from osrm.config import ExperimentConfig
from osrm.data import batches, encode
from osrm.diagnostics import subspace_report, summarise_report
from osrm.errors import OsrmError
from osrm.manifest import seal_files, verify_file
from osrm.rundir import stats_file
from osrm.stages.common import TaskStats, task_spec
from osrm.stats import (
    StatsMeta,
    collect_stats,
    find_target_modules,
    load_stats,
    save_stats,
    weight_fingerprint,
)
from osrm.subspace import osrm_bases
from osrm.tasks import load_task

log = logging.getLogger(__name__)


def stats_stage(
    cfg: ExperimentConfig, run_dir: Path, model: nn.Module, tokenizer: PreTrainedTokenizerBase
) -> tuple[TaskStats, dict[str, StatsMeta]]:
    """Statistics of every task: reuse ``stats/<task>.safetensors`` if it matches, else collect.

    A file is reused only if ``stats/osrm_manifest.json`` lists it with its sha256 (a file
    written by an interrupted run, or altered since, is collected again).
    """
    names = find_target_modules(model, cfg.lora.target_modules)
    fingerprint = weight_fingerprint(model, names)
    stats_by_task, metas = {}, {}
    for task in cfg.task_names:
        path = stats_file(run_dir, task)
        data = load_task(
            task_spec(cfg, task), "train", seed=cfg.seed, max_examples=cfg.stats.examples
        )
        expected = StatsMeta(
            base_model=cfg.model.name, fingerprint=fingerprint, task=task,
            n_examples=len(data), n_tokens=-1, max_length=cfg.stats.max_length, mask=cfg.stats.mask,
        )  # fmt: skip
        problem = verify_file(path) if path.is_file() else None
        if path.is_file() and problem is None:
            stats, meta = load_stats(path, check_manifest=False)
            if _same_inputs(meta, expected) and set(stats) == set(names):
                log.info("statistics for %s: reusing %s", task, path)
                stats_by_task[task], metas[task] = stats, meta
                continue
            log.info("statistics for %s: %s is stale, recomputing", task, path)
        elif problem is not None:
            log.warning("statistics for %s: %s; recomputing", task, problem)
        local = batches(encode(distributed.shard(data), tokenizer, cfg.stats.max_length),
                        tokenizer, cfg.stats.batch_size)  # fmt: skip
        stats = collect_stats(model, local, cfg.lora.target_modules, mask=cfg.stats.mask,
                              dtype=getattr(torch, cfg.stats.dtype))  # fmt: skip
        device = next(model.parameters()).device
        stats = distributed.all_reduce_stats(stats, device)  # every process: all examples
        meta = StatsMeta(**{**asdict(expected), "n_tokens": next(iter(stats.values())).count})
        if distributed.is_main():
            save_stats(path, stats, meta)
            seal_files([path])
        distributed.barrier()
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
        try:
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
                )
                for task in cfg.task_names
            }
        except OsrmError as e:  # name the config fields that led here
            raise OsrmError(f"lora.rank {cfg.lora.rank}, subspace mode {mode!r}: {e}") from None
        energies, overlaps = subspace_report(
            stats_by_task, bases, weighting=sub.weighting, center=sub.center, seed=cfg.seed
        )
        out[mode] = summarise_report(energies, overlaps)
    return out
