"""Stage 2: one adapter per (init, task), skipped when a matching one is saved."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from osrm import __version__, distributed
from osrm.adapters import Provenance, attach_lora, finished_adapter, lora_config, save_adapter
from osrm.config import ExperimentConfig, TrainSection
from osrm.constraints import constrain_a, interference_penalty, penalty_moments
from osrm.errors import OsrmError
from osrm.generative import causal_batches, training_rows
from osrm.inits import INITS
from osrm.linalg import StatsByTask
from osrm.models import load_base
from osrm.rundir import adapter_dir, budget_dir
from osrm.stages.statistics import ModeBases, solve_bases, subspace_options
from osrm.stats import (
    StatsMeta,
    find_target_modules,
    module_fingerprints,
    stats_digest,
)
from osrm.subspace import osrm_directions
from osrm.tasks.batching import batches, encode
from osrm.tasks.prompts import task_prompt
from osrm.tasks.registry import load_task
from osrm.tasks.spec import TaskSpec
from osrm.train import TrainResult, train

log = logging.getLogger(__name__)

Moments = tuple[torch.Tensor, torch.Tensor]  # (C_own, C_other) of one module, (d_in, d_in) each


def run_fingerprint(cfg: ExperimentConfig, *parts: object) -> str:
    """Hash of what determines an adapter: model, LoRA and training settings, seed, parts."""
    # the budgets saved on the way do not change the adapter at the last step
    train = cfg.train.model_dump(exclude={"checkpoints"})
    payload = [cfg.model.model_dump(), cfg.lora.model_dump(), train, cfg.seed]
    blob = json.dumps([*payload, *map(str, parts)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def budget_fingerprint(cfg: ExperimentConfig, task: str, init: str, prov: object, step: int) -> str:
    """The fingerprint of an adapter saved at ``step`` of the run that ``run_fingerprint`` names."""
    return run_fingerprint(cfg, task, init, prov, f"step={step}")


def provenance(
    cfg: ExperimentConfig,
    init: str,
    spec: TaskSpec,
    digests: dict[str, str],
    metas: dict[str, StatsMeta],
) -> Provenance:
    """How ``spec``'s adapter for ``init`` starts (recorded beside it and in its fingerprint),
    and a generative task's prompt (recorded, not in the fingerprint)."""
    mode, task = INITS[init].mode, spec.name
    prompt = {}
    if spec.format == "generate":
        p = task_prompt(spec)
        prompt = {"template": p.template, "verbalisers": list(p.verbalisers),
                  "labels": list(spec.label_names or ())}  # fmt: skip
    return Provenance(
        task=task, init=init, rank=cfg.lora.rank, mode=mode,
        options=subspace_options(cfg) if mode else {}, stats_digests=digests if mode else {},
        base_fingerprint=metas[task].fingerprint if task in metas else None,
        freeze_a=cfg.train.freeze_a or INITS[init].freeze_a, prompt=prompt,
    )  # fmt: skip


def adapter_stage(
    cfg: ExperimentConfig,
    run_dir: Path,
    specs: Mapping[str, TaskSpec],
    stats_by_task: StatsByTask,
    metas: dict[str, StatsMeta],
    solved: ModeBases | None = None,
) -> dict[tuple[str, str], Path]:
    """Train every (init, task) adapter into ``adapters/<init>/<task>``, skipping finished ones.

    An adapter directory counts as finished when its manifest verifies and its training
    record matches this config. OSRM inits start from the bases in ``solved`` (those of
    :func:`~osrm.stages.statistics.subspace_stage`); a mode not there is solved here. The
    budgets of ``train.checkpoints`` go to ``budgets/<step>/<init>/<task>`` on the way, with the
    adapter as initialised (B = 0) in ``budgets/0/...``, the reference for A's drift; when only
    some of them are missing, the run stops at the last one missing.
    """
    out = {}
    solved = solved or {}
    all_digests = {t: stats_digest(s) for t, s in stats_by_task.items()}
    for init in cfg.lora.inits:
        for task, spec in specs.items():
            # a task added later (`osrm add-task`) is invisible to the adapters trained before it
            known = cfg.known_tasks(task)
            stats = {t: stats_by_task[t] for t in known}
            digests = {t: all_digests[t] for t in known}
            path = adapter_dir(run_dir, init, task)
            prov = provenance(cfg, init, spec, digests, metas)
            expected = run_fingerprint(cfg, task, init, prov)
            done = finished_adapter(path, expected)
            steps = [0, *cfg.train.checkpoints] if cfg.train.checkpoints else []
            budgets = {k: budget_dir(run_dir, k, init, task) for k in steps}
            budgets = {  # the budgets still to save
                k: p
                for k, p in budgets.items()
                if not finished_adapter(p, budget_fingerprint(cfg, task, init, prov, k))
            }
            if done and not budgets:
                log.info("adapter %s/%s: reusing %s", init, task, path)
            else:
                log.info("adapter %s/%s: training", init, task)
                mode = prov.mode
                bases = directions = moments = None  # peft's default init, A free, no penalty
                if mode is not None:
                    whole = len(known) == len(stats_by_task)  # `solved` saw every task
                    bases = solved.get(mode, {}).get(task) if whole else None
                    if bases is None:
                        bases = solve_bases(cfg, stats, metas, task, mode)
                    directions, moments = keep_a_inputs(bases, cfg, stats, metas, task, mode)
                train_task(
                    cfg, spec, path, bases=bases, provenance=prov, budgets=budgets, final=not done,
                    directions=directions, moments=moments,
                )  # fmt: skip
            out[init, task] = path
    return out


def keep_a_inputs(
    bases: dict[str, torch.Tensor],
    cfg: ExperimentConfig,
    stats_by_task: StatsByTask,
    metas: dict[str, StatsMeta],
    task: str,
    mode: str,
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Moments] | None]:
    """What ``lora.a_subspace`` and ``train.interference_penalty`` need for an OSRM init ``bases``:
    ``directions`` (module -> (k, d_in), None when off or k >= every d_in: A is free) and
    ``moments`` (module -> (C_own, C_other), None when the penalty is 0)."""
    k, directions = cfg.lora.a_subspace, None
    if k is not None and k < max(b.shape[1] for b in bases.values()):
        try:
            directions = osrm_directions(stats_by_task, task, bases, k, mode, seed=cfg.seed,
                                         metas=metas, **subspace_options(cfg))  # fmt: skip
        except OsrmError as e:
            raise OsrmError(f"lora.a_subspace {k}, subspace mode {mode!r}: {e}") from None
    moments = None
    if cfg.train.interference_penalty > 0:
        moments = penalty_moments(stats_by_task, task, cfg.subspace.weighting)
    return directions, moments


def frozen_a_settings(train_cfg: TrainSection) -> TrainSection:
    """The train settings of an adapter whose A is frozen: ``frozen_a_lr`` and ``frozen_a_steps``
    replace ``lr`` and ``steps`` where they are set."""
    update = {"lr": train_cfg.frozen_a_lr, "steps": train_cfg.frozen_a_steps}
    return train_cfg.model_copy(update={k: v for k, v in update.items() if v is not None})


def adapter_settings(train_cfg: TrainSection, freeze_a: bool, examples: int) -> TrainSection:
    """The train settings of one adapter: those of a frozen A, and steps from ``epochs``."""
    if freeze_a:  # B alone learns more slowly: it may get its own lr and step count
        train_cfg = frozen_a_settings(train_cfg)
    if train_cfg.epochs is not None:  # the paper trains for epochs: steps follow the task size
        steps = math.ceil(train_cfg.epochs * examples / train_cfg.batch_size)
        train_cfg = train_cfg.model_copy(update={"steps": steps})
    return train_cfg


def training_record(
    cfg: ExperimentConfig,
    train_cfg: TrainSection,
    task: str,
    init: str,
    examples: int,
    result: TrainResult,
    fingerprint: str,
) -> dict:
    """``training.json``: what an adapter was trained with, its losses and its fingerprint."""
    return {
        "task": task, "init": init, "seed": cfg.seed, "model": cfg.model.name,
        "train": train_cfg.model_dump(), "lora": cfg.lora.model_dump(),
        "train_examples": examples, "steps": result.steps, "seconds": result.seconds,
        "tokens": result.tokens, "resumed_from": result.resumed_from, "losses": result.losses,
        "fingerprint": fingerprint, "osrm_version": __version__,
    }  # fmt: skip


def train_task(
    cfg: ExperimentConfig,
    spec: TaskSpec,
    out_dir: Path,
    *,
    bases: dict[str, torch.Tensor] | None = None,
    provenance: Provenance | None = None,
    progress: bool = True,
    budgets: Mapping[int, Path] | None = None,
    final: bool = True,
    directions: Mapping[str, torch.Tensor] | None = None,
    moments: Mapping[str, Moments] | None = None,
) -> dict:
    """Train one task's adapter (peft default init, or OSRM ``bases``) and save it atomically.

    The base model and head are drawn with ``cfg.seed``, so every init of a task starts from
    the same head and sees the same batches. Checkpoints go to ``.<out_dir>.ckpt`` beside the
    adapter and are removed once the adapter is saved. ``budgets`` (step -> folder): the adapter
    is also saved there at that step, its training record saying ``step``; with ``final=False``
    the run stops at the last budget and ``out_dir`` (already finished) is left alone.
    ``directions`` and ``moments`` (:func:`keep_a_inputs`) turn on ``lora.a_subspace`` and
    ``train.interference_penalty``.
    """
    task = spec.name
    torch.manual_seed(cfg.seed)
    generate = spec.format == "generate"
    model, tokenizer = load_base(cfg, spec.num_labels, generate=generate)
    if provenance is not None:  # per-module base hashes (not part of the run fingerprint)
        targets = find_target_modules(model, cfg.lora.target_modules)
        provenance = replace(provenance, base_fingerprints=module_fingerprints(model, targets))
    init = provenance.init if provenance else ("osrm" if bases is not None else "lora")
    freeze_a = provenance.freeze_a if provenance else cfg.train.freeze_a
    peft_model = attach_lora(model, lora_config(cfg, generate), bases=bases, freeze_a=freeze_a)
    if directions is not None:
        constrain_a(peft_model, directions)
    mu = cfg.train.interference_penalty
    penalty = interference_penalty(peft_model, moments, mu) if moments is not None else None
    data = load_task(spec, "train", seed=cfg.seed, max_examples=cfg.train.max_train_examples)
    micro = cfg.train.batch_size // cfg.train.grad_accum
    if generate:  # prompt + verbaliser, the loss on the answer only
        rows = training_rows(data, spec, tokenizer, cfg.train.max_length)

        def epoch_batches(epoch: int):
            return causal_batches(rows, tokenizer, micro, shuffle=True,
                                  seed=cfg.seed * 100_003 + epoch)  # fmt: skip
    else:
        encoded = encode(data, tokenizer, cfg.train.max_length)

        def epoch_batches(epoch: int):
            return batches(
                encoded, tokenizer, micro, shuffle=True, seed=cfg.seed * 100_003 + epoch,
                group_by_length=cfg.train.group_by_length,
            )  # fmt: skip

    ckpt = out_dir.parent / f".{out_dir.name}.ckpt"
    fingerprint = run_fingerprint(cfg, task, init, provenance)
    train_cfg = adapter_settings(cfg.train, freeze_a, len(data))
    budgets = dict(budgets or {})
    if budgets and max(budgets) > train_cfg.steps:  # steps from epochs: known only here
        raise OsrmError(
            f"train.checkpoints: step {max(budgets)} is beyond the {train_cfg.steps} steps of "
            f"{task}'s {init} adapter"
        )

    def record(result: TrainResult, fingerprint: str) -> dict:
        return training_record(cfg, train_cfg, task, init, len(data), result, fingerprint)

    def save_budget(result: TrainResult) -> None:
        step = result.steps
        if distributed.is_main():  # every process trained the same weights; one writes them
            budget = record(result, budget_fingerprint(cfg, task, init, provenance, step))
            save_adapter(peft_model, budgets[step], provenance, {**budget, "step": step})

    if 0 in budgets:  # the initial adapter: what attach_lora built, before any checkpoint loads
        save_budget(TrainResult(losses=[], steps=0, seconds=0.0, tokens=0, resumed_from=0))
        del budgets[0]
        if not budgets and not final:
            return {}
    result = train(peft_model, epoch_batches, train_cfg, checkpoint_dir=ckpt,
                   fingerprint=fingerprint, progress=progress, budgets=budgets,
                   on_budget=save_budget, stop_at=None if final else max(budgets),
                   penalty=penalty)  # fmt: skip
    out = record(result, fingerprint)
    if distributed.is_main():
        if final:
            save_adapter(peft_model, out_dir, provenance, out)
        shutil.rmtree(ckpt, ignore_errors=True)
    distributed.barrier()
    return out
