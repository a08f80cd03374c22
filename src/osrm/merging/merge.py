"""Streaming merges: one module at a time over k task-vector mappings.

Peak memory is about k × one module's ΔW (the stacked deltas of the module being merged plus
the method's temporaries); no dense model, and never k of them, is built. Linear methods over
LoRA adapters need one ΔW only: the product of the concatenated, weighted factors.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from osrm.errors import OsrmError
from osrm.guards import check_finite
from osrm.merging.auto_weights import AUTO_MODES, auto_weights
from osrm.merging.deltas import LoraDeltas
from osrm.merging.grams import GramLookup, StatsSource, gram_lookup
from osrm.merging.loading import coverage_gaps, load_adapters
from osrm.merging.methods import weight_average
from osrm.merging.registry import (
    check_hyperparameters,
    get_method,
    hyperparameters,
    methods_with,
    validate_hyperparameters,
)

log = logging.getLogger(__name__)


def task_weights(weights: Sequence[float] | Tensor | None, k: int) -> Tensor:
    """(k,) float64 weights; ``None`` means 1 for every task."""
    if k == 0:
        raise OsrmError("no task vectors to merge (k = 0)")
    if weights is None:
        return torch.ones(k, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    if w.numel() != k or not torch.isfinite(w).all():
        raise OsrmError(f"weights: expected {k} finite numbers (one per task), got {weights}")
    return w


Weights = Sequence[float] | Tensor | Mapping[str, Tensor] | str | None


def weights_for(weights: Weights, k: int) -> Callable[[str], Tensor]:
    """Module name -> its (k,) weights: one vector for all, or a per-module mapping (auto)."""
    if isinstance(weights, str):
        raise OsrmError(f"weights {weights!r}: resolve it first (resolve_weights)")
    if isinstance(weights, Mapping):
        per_module = {name: task_weights(w, k) for name, w in weights.items()}
        return per_module.__getitem__
    shared = task_weights(weights, k)
    return lambda _name: shared


def resolve_weights(
    weights: Weights, sources: Sequence[Mapping[str, Tensor]], grams: GramLookup | None
) -> Sequence[float] | Tensor | Mapping[str, Tensor] | None:
    """``"auto"`` / ``"auto-per-module"`` -> module -> λ from the statistics
    (:mod:`osrm.merging.auto_weights`); anything else is returned as is."""
    if not isinstance(weights, str):
        return weights
    if weights not in AUTO_MODES:
        raise OsrmError(f"weights: expected numbers or one of {list(AUTO_MODES)}, got {weights!r}")
    if grams is None:
        raise OsrmError(f"weights {weights}: needs statistics, one file per adapter (--stats)")
    names = sorted(set().union(*sources))
    if all(isinstance(s, LoraDeltas) for s in sources):  # from the factors: no dense ΔW
        modules = ((n, [s.factors(n) if n in s else None for s in sources]) for n in names)
    else:
        modules = ((n, _stack(sources, n)) for n in names)
    return auto_weights(modules, grams, per_module=weights == "auto-per-module")


def module_seed(seed: int, name: str) -> int:
    """A 63-bit seed for one module: the draws do not depend on which other modules exist."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _stack(sources: Sequence[Mapping[str, Tensor]], name: str) -> Tensor:
    """(k, *shape) float32 deltas of one module; zeros for sources that lack it."""
    out = None
    for i, source in enumerate(sources):
        if name not in source:
            continue
        if isinstance(source, LoraDeltas):  # shapes were checked by check_same_base
            if out is None:
                out = torch.zeros(len(sources), *source.shape(name), dtype=torch.float32)
            source.write_delta(name, out[i])  # computed in place: no per-task temporary
            continue
        delta = source[name]
        if out is None:
            out = torch.zeros(len(sources), *delta.shape, dtype=torch.float32)
        elif delta.shape != out.shape[1:]:
            raise OsrmError(
                f"{name}: task {i} has shape {tuple(delta.shape)}, expected {tuple(out.shape[1:])}"
            )
        out[i].copy_(delta)
    return out


def _from_factors(sources: Sequence[LoraDeltas], name: str, coeffs: Tensor) -> Tensor:
    """Σ_i c_i s_i B_i A_i of one module as [c_1 s_1 B_1, ...] @ [A_1; ...]: one (d_out, d_in)
    product, no (k, d_out, d_in) stack (a module missing from an adapter adds nothing)."""
    pairs = [(s.factors(name), float(c)) for s, c in zip(sources, coeffs, strict=True) if name in s]
    b = torch.cat([b * c for (b, _), c in pairs], dim=1)
    return b @ torch.cat([a for (_, a), _ in pairs], dim=0)


def iter_merged(
    sources: Sequence[Mapping[str, Tensor]],
    method: str,
    weights: Sequence[float] | Tensor | None = None,
    *,
    grams: GramLookup | None = None,
    **hp,
) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(name, merged ΔW)`` module by module, in sorted name order.

    Args:
        sources: k mappings name -> delta (e.g. :func:`lora_deltas`, :func:`full_deltas`);
            a name missing from some sources is a zero delta there.
        method: a key of ``METHODS``.
        weights: k task weights (default 1 each), a mapping module -> k weights, or
            ``"auto"`` / ``"auto-per-module"`` (from ``grams``, see :func:`resolve_weights`).
        grams: methods that ``needs_stats`` and auto weights only: ``grams(name, gram)`` ->
            (k, d_in, d_in) Gram matrices (``gram``: the method's ``"mean"`` or ``"sum"``, see
            :class:`GramLookup`), or None for a parameter without statistics (then averaged with
            ``weight_average``, as in the RegMean paper for non-linear parameters).
        **hp: the method's hyperparameters. For ``random`` methods ``seed`` (default 0) is turned
            into one generator per module, seeded from (seed, name); a ``generator`` is used
            as is, in sorted module order.
    """
    m = get_method(method)
    check_hyperparameters(method, hp)
    if "grams" in hp:
        raise OsrmError("grams are per module: pass statistics (stats=...) instead")
    if m.needs_stats and grams is None:
        raise OsrmError(f"{method} needs input statistics: pass stats=[one per task]")
    weights = resolve_weights(weights, sources, grams)
    w_of = weights_for(weights, len(sources))
    seed = hp.pop("seed", None)
    bad_seed = isinstance(seed, bool) or not isinstance(seed, int) or "generator" in hp
    if seed is not None and bad_seed:
        raise OsrmError(f"seed must be an integer and not combined with generator, got {seed!r}")
    gaps = coverage_gaps(sources)
    if gaps:
        some = dict(list(gaps.items())[:3])
        log.warning("%d modules missing from some task vectors (zero there): %s", len(gaps), some)
    factored = m.linear and all(isinstance(s, LoraDeltas) for s in sources)
    full_hp = {**hyperparameters(method), **hp}
    for name in sorted(set().union(*sources)):
        if factored:
            validate_hyperparameters(method, hp, w_of(name))
            merged = _from_factors(sources, name, m.coeffs(w_of(name), full_hp))
            check_finite([(name, merged)], f"merge {method}")
            yield name, merged
            continue
        deltas, w = _stack(sources, name), w_of(name)
        extra = {}
        if m.random and "generator" not in hp:
            extra["generator"] = torch.Generator().manual_seed(module_seed(seed or 0, name))
        elif m.needs_stats:  # the Gram kind is the method's ``gram`` hyperparameter
            extra["grams"] = grams(name, hp.get("gram", "mean"))
            if extra["grams"] is None:  # e.g. a LayerNorm of a full fine-tune
                log.info("%s: no input statistics, averaged with weight_average", name)
                merged = weight_average(deltas, w, scale=hp.get("scale", 1.0))
                check_finite([(name, merged)], f"merge {method}")
                yield name, merged
                continue
            if extra["grams"].shape[-1] != deltas.shape[-1]:
                raise OsrmError(
                    f"{name}: statistics have d_in {extra['grams'].shape[-1]} but the deltas "
                    f"{deltas.shape[-1]}; were they collected on this base model?"
                )
        merged = m(deltas, w, **hp, **extra)
        # an overflow (extreme scale, weights or lora_alpha) stops here: no Inf/NaN ΔW reaches
        # a writer, an SVD or a model that would be scored
        check_finite([(name, merged)], f"merge {method}")
        yield name, merged


def merge_deltas(
    sources: Sequence[Mapping[str, Tensor]],
    method: str,
    weights: Sequence[float] | Tensor | None = None,
    *,
    grams: GramLookup | None = None,
    **hp,
) -> dict[str, Tensor]:
    """Merged name -> ΔW of k task-vector mappings (see :func:`iter_merged`)."""
    return dict(iter_merged(sources, method, weights, grams=grams, **hp))


def check_stats_use(method: str, weights: Weights, stats: Sequence | None) -> None:
    """Statistics serve the methods that ``needs_stats`` and auto weights, nothing else."""
    if stats is not None and not get_method(method).needs_stats and not isinstance(weights, str):
        raise OsrmError(
            f"stats are only used by {methods_with('needs_stats')} and by weights "
            f"{list(AUTO_MODES)}, not by {method!r}"
        )


def merge_adapters(
    adapter_dirs: Sequence[str | Path],
    method: str,
    weights: Weights = None,
    *,
    stats: Sequence[StatsSource] | None = None,
    **hp,
) -> dict[str, Tensor]:
    """Merge k peft LoRA adapters in ΔW space: module name -> merged ΔW (d_out, d_in).

    Args:
        adapter_dirs: k adapter directories from the same base model (any ranks/alphas).
        method: a key of ``METHODS``; unknown names fail with the valid list.
        weights: k task weights (default 1 each), or ``"auto"`` / ``"auto-per-module"``.
        stats: for methods that ``needs_stats`` (``regmean``) and auto weights: one statistics
            file per adapter (``osrm.stats``).
        **hp: the method's hyperparameters (``scale``, ``density``, ``seed``, ...).
    """
    check_hyperparameters(method, hp)
    check_stats_use(method, weights, stats)
    adapters = load_adapters(adapter_dirs)
    grams = gram_lookup(stats, adapters) if stats is not None else None
    return merge_deltas(adapters, method, weights, grams=grams, **hp)
