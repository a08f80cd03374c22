"""Stage 1: activation statistics per task (reused when their inputs match), OSRM diagnostics."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from osrm import distributed
from osrm.artifacts import seal_files, verify_file
from osrm.config import ExperimentConfig
from osrm.diagnostics import subspace_report, summarise_report
from osrm.errors import OsrmError
from osrm.generative import prompted
from osrm.linalg import StatsByTask
from osrm.rundir import stats_file
from osrm.stats import (
    StatsMeta,
    collect_stats,
    find_target_modules,
    load_stats,
    save_stats,
    weight_fingerprint,
)
from osrm.subspace import osrm_bases
from osrm.tasks.batching import batches, encode
from osrm.tasks.registry import load_task
from osrm.tasks.spec import TaskSpec

log = logging.getLogger(__name__)

ModeBases = dict[str, dict[str, dict[str, Tensor]]]  # mode -> task -> module -> (rank, d_in) A


def stats_stage(
    cfg: ExperimentConfig,
    run_dir: Path,
    specs: Mapping[str, TaskSpec],
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[StatsByTask, dict[str, StatsMeta]]:
    """Statistics of every task: reuse ``stats/<task>.safetensors`` if it matches, else collect.

    A file is reused only if ``stats/osrm_manifest.json`` lists it with its sha256 (a file
    written by an interrupted run, or altered since, is collected again).
    """
    names = find_target_modules(model, cfg.lora.target_modules)
    fingerprint = weight_fingerprint(model, names)
    stats_by_task, metas = {}, {}
    for task, spec in specs.items():
        path = stats_file(run_dir, task)
        data = load_task(spec, "train", seed=cfg.seed, max_examples=cfg.stats.examples)
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
        if spec.format == "generate":  # the layer inputs of the prompts, not of the answers
            data = prompted(data, spec)
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


def subspace_options(cfg: ExperimentConfig) -> dict:
    """Keyword options of :func:`osrm.subspace.osrm_bases` from the config (also recorded in
    each adapter's provenance)."""
    return cfg.subspace.model_dump(include={"weighting", "center", "basis", "ridge"})


def solve_bases(
    cfg: ExperimentConfig,
    stats_by_task: StatsByTask,
    metas: dict[str, StatsMeta],
    task: str,
    mode: str,
) -> dict[str, Tensor]:
    """OSRM initial A of ``task``'s adapter in ``mode``: module -> (rank, d_in)."""
    return osrm_bases(stats_by_task, task, cfg.lora.rank, mode, seed=cfg.seed, metas=metas,
                      **subspace_options(cfg))  # fmt: skip


def subspace_stage(
    cfg: ExperimentConfig, stats_by_task: StatsByTask, metas: dict[str, StatsMeta]
) -> tuple[ModeBases, dict[str, list[dict]]]:
    """OSRM bases of every task in every configured mode, and their summary per task.

    The bases are returned so that the training stage of the same process reuses them.
    """
    sub = cfg.subspace
    solved, summary = {}, {}
    for mode in sub.modes:
        try:
            solved[mode] = {
                task: solve_bases(cfg, stats_by_task, metas, task, mode) for task in stats_by_task
            }
        except OsrmError as e:  # name the config fields that led here
            raise OsrmError(f"lora.rank {cfg.lora.rank}, subspace mode {mode!r}: {e}") from None
        energies, overlaps = subspace_report(
            stats_by_task, solved[mode], weighting=sub.weighting, center=sub.center, seed=cfg.seed
        )
        summary[mode] = summarise_report(energies, overlaps)
    return solved, summary
