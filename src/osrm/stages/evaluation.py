"""Stage 3: evaluate base, individual and merged models of every init on every task.

Merging happens in ΔW space (``osrm.merging``) and is applied to one in-memory backbone, module
by module; each task is then scored with its own head swapped in. Every score is appended to
``results.jsonl`` as soon as it exists, and settings already there are skipped on a re-run.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from osrm import distributed
from osrm.adapters import load_adapter
from osrm.artifacts import atomic_dir
from osrm.config import ExperimentConfig
from osrm.errors import OsrmError
from osrm.evaluate import evaluate
from osrm.heads import adapter_head, use_head
from osrm.merging import (
    METHODS,
    LoraDeltas,
    apply_deltas,
    gram_lookup,
    load_adapters,
    merge_deltas,
    validate_hyperparameters,
)
from osrm.merging.auto_weights import AUTO_MODES
from osrm.merging.merge import resolve_weights
from osrm.merging.outputs import write_dense
from osrm.merging.record import build_manifest, hp_record, weights_record
from osrm.models import load_base
from osrm.report import Result, append_results, hp_string, read_results
from osrm.rundir import RESULTS_FILE, merged_dir, retrofit_dir, run_path, stats_file
from osrm.stages.retrofitting import retrofit_series, sources
from osrm.tasks.spec import TaskSpec, generative

log = logging.getLogger(__name__)


def merge_grid(cfg: ExperimentConfig) -> list[tuple[str, dict[str, Any]]]:
    """Every (method, hyperparameters) setting: the product of each method's value lists, or
    the union of such products when a method lists several grids (``[{scale: [0.5, 1]},
    {scale: 1, weights: auto}]``), without repeats.

    Random methods get ``seed = cfg.seed`` unless the config sets one. Names and values are
    checked here, so a typo fails before any training rather than after it.
    """
    grid = []
    for method, spaces in cfg.merge.methods.items():
        if method not in METHODS:
            raise OsrmError(f"merge.methods: unknown method {method!r}; valid: {sorted(METHODS)}")
        for space in spaces if isinstance(spaces, list) else [spaces]:
            for hp in _settings(cfg, method, dict(space or {})):
                if (method, hp) not in grid:
                    grid.append((method, hp))
    return grid


def _settings(cfg: ExperimentConfig, method: str, space: dict[str, Any]) -> list[dict[str, Any]]:
    """The checked settings of one grid of ``method``: the product of its value lists."""
    if METHODS[method].random:
        space.setdefault("seed", cfg.seed)
    keys = sorted(space)
    values = [v if isinstance(v, list) else [v] for v in (space[k] for k in keys)]
    out = []
    for combo in itertools.product(*values):
        hp = dict(zip(keys, combo, strict=True))
        try:
            weights = setting_weights(cfg, hp)
            numeric = None if isinstance(weights, str) else weights
            validate_hyperparameters(method, without_weights(hp), numeric)
        except OsrmError as e:
            raise OsrmError(f"merge.methods.{method}: {e}") from None
        if hp.get("weights") == GIVEN:
            del hp["weights"]  # the same setting as no `weights` key: one result key
        out.append(hp)
    return out


GIVEN = "given"  # a grid's `weights` value: merge.weights (1 each when unset)


def without_weights(hp: Mapping[str, Any]) -> dict[str, Any]:
    """A setting's hyperparameters for the method itself (``weights`` is the grid's)."""
    return {k: v for k, v in hp.items() if k != "weights"}


def setting_weights(cfg: ExperimentConfig, hp: Mapping[str, Any]) -> list[float] | str | None:
    """A setting's task weights: its ``weights`` (``auto``, ``auto-per-module`` or ``given``)
    or ``merge.weights``."""
    mode = hp.get("weights", GIVEN)
    if mode not in (GIVEN, *AUTO_MODES):
        raise OsrmError(f"weights: expected one of {[GIVEN, *AUTO_MODES]}, got {mode!r}")
    return cfg.merge.weights if mode == GIVEN else mode


@contextmanager
def merged_into(model: nn.Module, merged: Mapping[str, Tensor]) -> Iterator[nn.Module]:
    """Add merged ΔW's to ``model``'s weights for the duration of the block, then restore them."""
    saved = {name: model.get_parameter(name).detach().clone() for name in merged}
    try:
        apply_deltas(model, merged)
        yield model
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                model.get_parameter(name).copy_(value)


def save_merged(
    cfg: ExperimentConfig,
    out: Path,
    backbone: nn.Module,
    merged: Mapping[str, Tensor],
    sources: Sequence[LoraDeltas],
    method: str,
    hp: Mapping[str, Any],
    weights: Sequence[float] | Mapping[str, Tensor] | None,
) -> None:
    """``merge.save``: the merged dense backbone with every task's head and manifests, written
    exactly as ``osrm merge`` writes a dense output (:func:`osrm.merging.outputs.write_dense`)."""
    manifest = build_manifest(
        output="dense", method=method, weights=weights,
        hyperparameters=hp_record(method, hp), sources=sources, tasks=cfg.task_names,
    )  # fmt: skip
    with merged_into(backbone, merged), atomic_dir(out) as tmp:
        write_dense(tmp, backbone, sources, cfg.task_names, manifest)  # the first task's head


def merge_split(
    sources: Sequence[Mapping[str, Tensor]],
    method: str,
    weights: Sequence[float] | Mapping[str, Tensor] | None,
    grams,
    hp: Mapping[str, Any],
) -> dict[str, Tensor]:
    """Merged ΔW of every module; under a launcher the modules are split across processes
    (``weights`` already resolved: auto weights are solved over every module, see
    :func:`osrm.merging.merge.resolve_weights`)."""
    if distributed.world_size() == 1:
        return merge_deltas(sources, method, weights, grams=grams, **hp)
    names = sorted(set().union(*sources))

    def one(name: str) -> Tensor:  # random methods seed per module name: the split is invisible
        views = [{name: s[name]} if name in s else {} for s in sources]
        return merge_deltas(views, method, weights, grams=grams, **hp)[name]

    return dict(distributed.split_merge(names, one, distributed.state().device))


def load_adapter_model(cfg: ExperimentConfig, adapter_dir: Path, spec: TaskSpec):
    """Base model + saved adapter (with its head) through vanilla ``PeftModel.from_pretrained``."""
    model, tokenizer = load_base(cfg, spec.num_labels, generate=spec.format == "generate")
    return load_adapter(model, adapter_dir).eval(), tokenizer


def eval_task(
    cfg: ExperimentConfig, model: nn.Module, tokenizer, spec: TaskSpec
) -> dict[str, float]:
    """Metrics of ``model`` on the task's evaluation split as configured."""
    return evaluate(
        model,
        spec,
        cfg.eval.split,
        tokenizer=tokenizer,
        max_length=cfg.train.max_length,
        batch_size=cfg.eval.batch_size,
        seed=cfg.seed,
        max_examples=cfg.eval.max_eval_examples,
        progress=True,
        exact_match=cfg.eval.exact_match,
    )


def _append(path: Path, result: Result) -> None:
    if distributed.is_main():  # every process computed the same score; one writes it
        append_results(path, [result])


def _score(cfg: ExperimentConfig, model: nn.Module, tok, spec: TaskSpec, **key: Any) -> Result:
    scores = eval_task(cfg, model, tok, spec)
    metric = spec.main_metric
    return Result(task=spec.name, metric=metric, score=scores[metric], scores=scores, **key)


def _base(
    cfg: ExperimentConfig, backbone: nn.Module, tok, spec: TaskSpec, head: Mapping[str, Tensor],
    zero_shot: dict[str, Result], **series: Any,
) -> Result:  # fmt: skip
    """The base model's result for one series. A generative task's base has no head, so its
    (zero-shot) score is the same for every init and budget: scored once, kept in ``zero_shot``."""
    if spec.format == "generate" and spec.name in zero_shot:
        return replace(zero_shot[spec.name], **series)
    with use_head(backbone, head) as model:
        result = _score(cfg, model, tok, spec, kind="base", **series)
    if spec.format == "generate":
        zero_shot[spec.name] = result
    return result


def eval_stage(
    cfg: ExperimentConfig,
    run_dir: Path,
    specs: Mapping[str, TaskSpec],
    adapters: Mapping[tuple[str, str], Path],
    scored: Collection[str] | None = None,
) -> list[Result]:
    """Score base, individual and every merged setting; return all results of the run.

    ``scored``: the tasks to score (default: all); the merges still combine every adapter.

    The adapters saved at ``train.checkpoints`` (``budgets/<step>/<init>/<task>``) are scored
    and merged the same way, their results carrying ``step`` (``merge.save`` writes the merges
    of the final adapters only), and so are the ``merge.retrofit`` series (:func:`adapter_series`).
    """
    path = run_path(run_dir, RESULTS_FILE)
    results = read_results(path)
    done = {(r.key, r.task) for r in results}
    zero_shot = {r.task: r for r in results if r.kind == "base" and r.task in specs
                 and specs[r.task].format == "generate"}  # fmt: skip
    grid = merge_grid(cfg)
    backbone, tok = load_base(cfg, generate=generative(specs.values()))
    for init, step, dirs in adapter_series(cfg, run_dir, adapters):
        _eval_adapters(cfg, run_dir, specs, (backbone, tok, zero_shot), dirs, grid, done,
                       scored=cfg.task_names if scored is None else scored,
                       init=init, step=step)  # fmt: skip
    distributed.barrier()
    return read_results(path)


def adapter_series(
    cfg: ExperimentConfig, run_dir: Path, adapters: Mapping[tuple[str, str], Path]
) -> list[tuple[str, int | None, list[Path]]]:
    """(init, step, one adapter per task) of everything to score: each init's final adapters
    (step None) and budgets, then each ``merge.retrofit`` series (init ``<init>+rf<μ>``)."""
    steps = [*cfg.train.checkpoints, None]
    out = [(i, k, sources(cfg, run_dir, adapters, i, k)) for i in cfg.lora.inits for k in steps]
    for label, _, _ in retrofit_series(cfg):
        out += [(label, k, [retrofit_dir(run_dir, k, label) / t for t in cfg.task_names])
                for k in steps]  # fmt: skip
    return out


def _eval_adapters(
    cfg: ExperimentConfig,
    run_dir: Path,
    specs: Mapping[str, TaskSpec],
    base: tuple[nn.Module, Any, dict[str, Result]],
    dirs: Sequence[Path],
    grid: Sequence[tuple[str, dict[str, Any]]],
    done: set,
    scored: Collection[str],
    **series: Any,
) -> None:
    """Base, individual and merged scores of one set of adapters (one per task, in task order)
    whose results carry ``series`` (``init``, ``step``); settings in ``done`` are skipped.
    ``base``: the backbone, its tokenizer and the zero-shot results of generative tasks."""
    path, (backbone, tok, zero_shot), tasks = run_path(run_dir, RESULTS_FILE), base, cfg.task_names
    init, step = series["init"], series["step"]
    # generative tasks have no head: the backbone answers every task from its prompt
    heads = {t: adapter_head(d) if specs[t].format == "classify" else {}
             for t, d in zip(tasks, dirs, strict=True)}  # fmt: skip
    for task, adapter_dir in zip(tasks, dirs, strict=True):
        if task not in scored:
            continue
        if ((init, "individual", "", "", step), task) not in done:
            model, _ = load_adapter_model(cfg, adapter_dir, specs[task])
            _append(path, _score(cfg, model, tok, specs[task], kind="individual", **series))
        if ((init, "base", "", "", step), task) not in done:
            result = _base(cfg, backbone, tok, specs[task], heads[task], zero_shot, **series)
            _append(path, result)
    sources = load_adapters(dirs)
    grams, solved = None, {}  # auto weights depend on the adapters only: solved once per mode
    for method, hp in grid:
        key = (init, "merged", method, hp_string(hp), step)
        todo = [t for t in tasks if (key, t) not in done and t in scored]
        if not todo:
            continue
        weights, needs_stats = setting_weights(cfg, hp), METHODS[method].needs_stats
        if (needs_stats or isinstance(weights, str)) and grams is None:
            grams = gram_lookup([stats_file(run_dir, t) for t in tasks], sources)
        at = "" if step is None else f" at step {step}"
        log.info("merging %s adapters%s: %s %s", init, at, method, hp_string(hp))
        if isinstance(weights, str):
            if weights not in solved:
                solved[weights] = resolve_weights(weights, sources, grams)
                log.info("%s weights of %s%s: %s", weights, init, at,
                         weights_record(solved[weights], len(sources)))  # fmt: skip
            weights = solved[weights]
        own = without_weights(hp)
        merged = merge_split(sources, method, weights, grams if needs_stats else None, own)
        if cfg.merge.save and step is None and distributed.is_main():
            save_merged(cfg, merged_dir(run_dir, init, method, hp), backbone, merged, sources,
                        method, own, weights)  # fmt: skip
        with merged_into(backbone, merged):
            for task in todo:
                with use_head(backbone, heads[task]) as model:
                    result = _score(cfg, model, tok, specs[task], kind="merged", method=method,
                                    hp=hp_string(hp), **series)  # fmt: skip
                _append(path, result)
