"""Merged artifacts: a dense backbone (+ per-task heads) or a peft LoRA adapter, with manifest.

Both stream module by module. The dense backbone adds each merged ΔW into the base weight (in
float32, stored back in the base dtype) and is written with ``save_pretrained``; heads are never
merged, each task's head goes to ``heads/<task>.safetensors``. The LoRA output is exact for
linear methods, whose merge is a concatenation of the factors (rank Σ r_i), and otherwise a
truncated SVD of each merged ΔW with its relative error reported.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from osrm.artifacts import atomic_dir, seal_dir
from osrm.errors import OsrmError
from osrm.guards import check_finite
from osrm.heads import first_head, save_heads, use_head
from osrm.merging.deltas import LoraDeltas
from osrm.merging.grams import GramLookup, StatsSource, gram_lookup
from osrm.merging.loading import load_adapters
from osrm.merging.lora_files import concat_factors, pick_head, write_adapter
from osrm.merging.merge import Weights, iter_merged, resolve_weights, weights_for
from osrm.merging.record import (
    build_manifest,
    hp_record,
    stats_record,
    task_names,
    write_manifest,
)
from osrm.merging.registry import (
    check_hyperparameters,
    get_method,
    hyperparameters,
    validate_hyperparameters,
)
from osrm.merging.spectral import factored_truncate, truncate

Source = str | Path | Mapping[str, Tensor]


def open_sources(sources: Sequence[Source]) -> list[Mapping[str, Tensor]]:
    """Adapter directories -> validated :class:`LoraDeltas`; mappings are used as they are."""
    if isinstance(sources, (str, Path)) or len(sources) == 0:
        raise OsrmError("sources: expected a non-empty list of adapters or task vectors")
    if all(isinstance(s, (str, Path)) for s in sources):
        return list(load_adapters(sources))
    if any(isinstance(s, (str, Path)) for s in sources):
        raise OsrmError("sources: pass all adapter directories or all task-vector mappings")
    return list(sources)


def apply_deltas(
    model: nn.Module,
    merged: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]],
    transposed: Collection[str] = (),
) -> list[str]:
    """Add each merged ΔW into ``model``'s parameter of the same name, in place.

    Args:
        merged: name -> ΔW, or an iterator of pairs (consumed one module at a time).
        transposed: names whose ΔW is (d_out, d_in) while the parameter is stored (d_in, d_out)
            (peft ``fan_in_fan_out`` modules, e.g. GPT-2's Conv1D).

    Returns:
        The names updated. The sum is formed in float32 and cast back to the parameter dtype.
    """
    items = merged.items() if isinstance(merged, Mapping) else merged
    done = []
    with torch.no_grad():
        for name, delta in items:
            try:
                param = model.get_parameter(name)
            except AttributeError:
                raise OsrmError(f"base model has no parameter {name!r} to merge into") from None
            delta = delta.T if name in transposed else delta
            if tuple(delta.shape) != tuple(param.shape):
                raise OsrmError(
                    f"{name}: base parameter has shape {tuple(param.shape)} but the merged delta "
                    f"has {tuple(delta.shape)}; is this the adapters' base model?"
                )
            param.copy_((param.float() + delta.to(param.device, torch.float32)).to(param.dtype))
            done.append(name)
    return done


@dataclass(frozen=True)
class DensePlan:
    """What a dense merge needs before its first write: opened sources, task names, Gram
    lookup, resolved weights, transposed modules, and the manifest to record."""

    method: str
    sources: list[Mapping[str, Tensor]]
    tasks: list[str]
    grams: GramLookup | None
    weights: object
    transposed: frozenset[str]
    manifest: dict

    def stream(self, hp: Mapping) -> Iterable[tuple[str, Tensor]]:
        """``(name, merged ΔW)`` in sorted name order (:func:`iter_merged`)."""
        return iter_merged(self.sources, self.method, self.weights, grams=self.grams, **hp)


def plan_dense(
    sources: Sequence[Source], method: str, weights: Weights, stats: Sequence[StatsSource] | None,
    tasks: Sequence[str] | None, hp: Mapping,
) -> DensePlan:  # fmt: skip
    """Check and resolve a dense merge's inputs (shared by the in-memory and streamed writers)."""
    check_hyperparameters(method, hp)
    opened = open_sources(sources)
    tasks = task_names(opened, tasks)
    adapters = [s for s in opened if isinstance(s, LoraDeltas)] or None
    grams = gram_lookup(stats, adapters, tasks) if stats is not None else None
    weights = resolve_weights(weights, opened, grams)
    transposed = frozenset().union(*(getattr(s, "transposed", ()) for s in opened))
    extra = {"stats": stats_record(stats)}
    manifest = build_manifest("dense", method, weights, hp_record(method, hp), opened, tasks, extra)
    return DensePlan(method, opened, tasks, grams, weights, transposed, manifest)


def save_merged_model(
    base_model: nn.Module,
    sources: Sequence[Source],
    out_dir: str | Path,
    method: str,
    weights: Weights = None,
    *,
    stats: Sequence[StatsSource] | None = None,
    tasks: Sequence[str] | None = None,
    **hp,
) -> Path:
    """Merge k task vectors into ``base_model`` (in place) and save it with heads and manifest.

    Args:
        base_model: the pre-trained transformers model the adapters were trained on; its
            weights are updated in place (copy it first to keep the original).
        sources: adapter directories, or task-vector mappings (e.g. :func:`full_deltas`).
        out_dir: written atomically: ``save_pretrained`` files (safetensors),
            ``heads/<task>.safetensors``, ``osrm_merge.json`` and ``osrm_manifest.json`` (sha256).
        method, weights, stats, **hp: as in :func:`merge_adapters`.
        tasks: task names for the heads (default: osrm provenance or directory names).
    """
    plan = plan_dense(sources, method, weights, stats, tasks, hp)
    opened, tasks, manifest = plan.sources, plan.tasks, plan.manifest
    updated = apply_deltas(base_model, plan.stream(hp), plan.transposed)
    manifest["modules"] = len(updated)
    check_finite(((n, base_model.get_parameter(n)) for n in updated), f"merged weights ({out_dir})")
    with atomic_dir(out_dir) as tmp:
        write_dense(tmp, base_model, opened, tasks, manifest)
    return Path(out_dir)


def write_dense(
    directory: Path,
    model: nn.Module,
    sources: Sequence[Mapping[str, Tensor]],
    tasks: Sequence[str],
    manifest: dict,
) -> None:
    """The files of a dense output in ``directory`` (a fresh atomic folder), sealed.

    ``model.safetensors`` carries the first task's real head (recorded as ``model_head``;
    never a randomly drawn one) with a config that matches it, so the folder loads with plain
    ``from_pretrained`` and its bytes depend only on the inputs; every task's head is also in
    ``heads/<task>.safetensors`` (swap with :func:`load_head`). Non-finite weights are refused
    before anything is written. The one writer of ``osrm merge`` and the pipeline's
    ``merge.save``.
    """
    head_task, head = first_head(sources, tasks)
    with use_head(model, head) if head else nullcontext(model):
        check_finite(model.named_parameters(), f"merged model ({directory.name})")
        manifest["model_head"] = head_task
        model.save_pretrained(str(directory), safe_serialization=True)
    manifest["heads"] = save_heads(directory, sources, tasks)
    write_manifest(directory, manifest)
    seal_dir(directory)


@dataclass(frozen=True)
class MergedAdapter:
    """What :func:`save_merged_adapter` wrote: ranks and relative errors per module."""

    path: Path
    exact: bool
    ranks: dict[str, int]
    rel_errors: dict[str, float]  # ‖ΔW − BA‖_F / ‖ΔW‖_F (0 for exact concatenation)


def save_merged_adapter(
    sources: Sequence[str | Path],
    out_dir: str | Path,
    method: str,
    weights: Weights = None,
    *,
    rank: int | None = None,
    exact_svd: bool = False,
    stats: Sequence[StatsSource] | None = None,
    tasks: Sequence[str] | None = None,
    head: str | bool = True,
    **hp,
) -> MergedAdapter:
    """Merge k LoRA adapters into one peft LoRA adapter (loadable by vanilla peft).

    Args:
        sources: k adapter directories from the same base model.
        rank: ``None`` with a linear method (``task_arithmetic``, ``weight_average``): exact
            concatenation, rank Σ r_i. Otherwise the output rank (default: the largest source
            rank) reached by a truncated SVD of each merged ΔW (for linear methods computed
            from the factors, exactly and cheaply).
        exact_svd: full SVD instead of a randomized one (4 power iterations) for non-linear
            methods; the reported errors are exact either way.
        method, weights, stats, tasks, **hp: as in :func:`save_merged_model`.
        head: which task's head (``modules_to_save``) goes inside the adapter, so that vanilla
            peft can load it (a SEQ_CLS adapter must carry one): ``True`` for the first task
            that has one, a task name, or ``False`` for none. Every task's head is also saved
            as ``heads/<task>.safetensors`` (swap with :func:`load_head`).

    Returns:
        A :class:`MergedAdapter` report; the same numbers are in ``osrm_merge.json``.
    """
    check_hyperparameters(method, hp)
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise OsrmError(f"rank must be a positive integer or None, got {rank!r}")
    adapters = load_adapters(sources)
    tasks = task_names(adapters, tasks)
    inside = pick_head(adapters, tasks, head)
    grams = gram_lookup(stats, adapters, tasks) if stats is not None else None
    weights = resolve_weights(weights, adapters, grams)
    factors, errors = _merged_factors(adapters, method, weights, rank, exact_svd, grams, hp)
    ranks = {n: a.shape[0] for n, (_, a) in factors.items()}
    exact = get_method(method).linear and rank is None
    report = MergedAdapter(Path(out_dir), exact, ranks, errors)
    extra = {
        "rank": rank,
        "exact": report.exact,
        "exact_svd": exact_svd,
        "ranks": ranks,
        "rel_errors": errors,
        "stats": stats_record(stats),
        "adapter_head": inside,
    }
    manifest = build_manifest(
        "lora", method, weights, hp_record(method, hp), adapters, tasks, extra
    )
    head_tensors = adapters[tasks.index(inside)].heads() if inside else {}
    pairs = ((f"{n} ({s})", t) for n, (b, a) in factors.items() for s, t in (("B", b), ("A", a)))
    check_finite(pairs, f"merged LoRA factors ({out_dir})")
    with atomic_dir(out_dir) as tmp:
        write_adapter(tmp, adapters[0].config, factors, head_tensors)
        manifest["heads"] = save_heads(tmp, adapters, tasks)
        write_manifest(tmp, manifest)
        seal_dir(tmp)
    return report


def _merged_factors(
    adapters: Sequence[LoraDeltas],
    method: str,
    weights: Weights,
    rank: int | None,
    exact_svd: bool,
    grams: GramLookup | None,
    hp: Mapping,
) -> tuple[dict[str, tuple[Tensor, Tensor]], dict[str, float]]:
    """Module -> output (B, A) float32, and module -> relative Frobenius error."""
    factors, errors = {}, {}
    if get_method(method).linear:  # from the factors: no dense ΔW at all
        w_of, full_hp = weights_for(weights, len(adapters)), {**hyperparameters(method), **hp}
        coeffs = {}
        for name in sorted(set().union(*adapters)):
            validate_hyperparameters(method, hp, w_of(name))  # the factors skip the method
            coeffs[name] = get_method(method).coeffs(w_of(name), full_hp)
        for name, (b, a) in concat_factors(adapters, coeffs).items():
            b, a, errors[name] = (b, a, 0.0) if rank is None else factored_truncate(b, a, rank)
            factors[name] = (b.float(), a.float())
        return factors, errors
    target = rank or max(m.rank for s in adapters for m in s.modules.values())
    for name, delta in iter_merged(adapters, method, weights, grams=grams, **hp):
        b, a, errors[name] = truncate(delta, target, exact=exact_svd)
        factors[name] = (b.float(), a.float())
    return factors, errors
