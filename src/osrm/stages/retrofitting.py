"""Stage 2b: ``merge.retrofit``. Each listed init's adapters, the final ones and every budget, are
retrofitted against the other tasks' statistics at each μ (:mod:`osrm.retrofit`) into
``retrofit/<step or final>/<init>+rf<μ>/<task>``; the evaluation stage scores and merges them as
one more init. A retrofit whose record matches its source adapter and μ is reused."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from osrm import distributed
from osrm.adapters import RECORD_FILE
from osrm.artifacts import atomic_dir, file_sha256, verify_dir
from osrm.config import ExperimentConfig
from osrm.loaders import read_json
from osrm.merging.deltas import WEIGHTS_FILE
from osrm.merging.grams import gram_lookup
from osrm.merging.loading import load_adapters
from osrm.merging.record import stats_record
from osrm.retrofit import (
    RETROFIT_FILE,
    retrofit_adapters,
    retrofit_record,
    retrofit_sources,
    write_retrofitted,
)
from osrm.rundir import adapter_dir, budget_dir, retrofit_dir, retrofit_label, stats_file

log = logging.getLogger(__name__)


def retrofit_series(cfg: ExperimentConfig) -> list[tuple[str, str, float]]:
    """(label, init, μ) of every retrofitted series of the config, in config order."""
    retrofit = cfg.merge.retrofit
    if retrofit is None:
        return []
    inits = retrofit.inits or cfg.lora.inits
    return [(retrofit_label(i, mu), i, mu) for i in inits for mu in retrofit.mu]


def sources(
    cfg: ExperimentConfig, run_dir: Path, adapters: Mapping[tuple[str, str], Path], init: str,
    step: int | None,
) -> list[Path]:  # fmt: skip
    """The trained adapters of ``init`` at ``step`` (None: final), in task order."""
    if step is None:
        return [adapters[init, t] for t in cfg.task_names]
    return [budget_dir(run_dir, step, init, t) for t in cfg.task_names]


def up_to_date(out: Path, source: Path, mu: float, stats: list[Path]) -> bool:
    """``out`` verifies and records this ``mu`` and the current bytes of ``source`` and of the
    statistics (a task added since changes what the others avoid)."""
    if not (out / RETROFIT_FILE).is_file() or verify_dir(out) is not None:
        return False
    record = read_json(out / RETROFIT_FILE, "retrofit record")
    hashes = [s.get("sha256") for s in record.get("stats", [])]
    return (
        record.get("mu") == mu
        and record.get("source", {}).get("sha256") == file_sha256(source / WEIGHTS_FILE)
        and hashes == [file_sha256(s) for s in stats]
    )


def retrofit_stage(
    cfg: ExperimentConfig, run_dir: Path, adapters: Mapping[tuple[str, str], Path]
) -> None:
    """Write every retrofitted series that is missing or stale."""
    stats = [stats_file(run_dir, t) for t in cfg.task_names]
    for label, init, mu in retrofit_series(cfg):
        for step in [*cfg.train.checkpoints, None]:
            src = sources(cfg, run_dir, adapters, init, step)
            out = retrofit_dir(run_dir, step, label)
            pairs = zip(src, cfg.task_names, strict=True)
            if all(up_to_date(out / t, s, mu, stats) for s, t in pairs):
                continue
            at = "final" if step is None else f"step {step}"
            log.info("retrofitting %s adapters (%s) at mu=%g", init, at, mu)
            if distributed.is_main():
                retrofit_adapters(src, stats, mu, out, tasks=cfg.task_names)
            distributed.barrier()


def retrofit_against(
    run_dir: Path, inits: Sequence[str], old: Sequence[str], new: str, kept: Path, mu: float
) -> None:
    """Each final adapter of the ``old`` tasks retrofitted in place against the ``new`` task's
    inputs (``μ·E_new‖BA'x‖²``, ``osrm add-task --retrofit-mu``); its original is copied to
    ``kept/<init>/<task>`` first and is the source of every later try."""
    new_stats = stats_file(run_dir, new)
    for init in inits:
        fresh = adapter_dir(run_dir, init, new)
        for task in old:
            live, original = adapter_dir(run_dir, init, task), kept / init / task
            if not original.is_dir() or verify_dir(original) is not None:
                with atomic_dir(original) as tmp:
                    shutil.copytree(live, tmp, dirs_exist_ok=True)
            stats = [stats_file(run_dir, task), new_stats]
            if up_to_date(live, original, mu, stats):
                continue
            log.info("retrofitting %s/%s against %s at mu=%g", init, task, new, mu)
            pair = load_adapters([original, fresh])
            grams = gram_lookup(stats, pair, [task, new])
            done = retrofit_sources(pair, grams, [task, new], mu)[0]
            record = retrofit_record(done, mu, stats_record(stats))
            write_retrofitted(live, done, record, keep=(RECORD_FILE,))
