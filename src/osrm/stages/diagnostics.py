"""Stage 3b: diagnostics of the trained adapters, from the statistics: cross-task interference
ratios (``interference.json``) and, with ``train.checkpoints``, A's drift and energies at every
budget (``budget_diagnostics.json``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from osrm.adapters import RECORD_FILE
from osrm.config import ExperimentConfig
from osrm.diagnostics import interference_matrix
from osrm.drift import Snapshot, budget_diagnostics
from osrm.linalg import StatsByTask
from osrm.loaders import read_json
from osrm.merging import load_adapters
from osrm.rundir import budget_dir


def interference_stage(
    cfg: ExperimentConfig, adapters: Mapping[tuple[str, str], Path], stats_by_task: StatsByTask
) -> dict[str, dict[str, dict[str, float]]]:
    """Per init, the cross-task interference ratios ‖ΔW_j X_tᵀ‖ / ‖ΔW_t X_tᵀ‖ (method.md §6)."""
    out = {}
    for init in dict.fromkeys(i for i, _ in adapters):  # the inits, then retrofitted series
        deltas = {}
        for task in cfg.task_names:
            (source,) = load_adapters([adapters[init, task]])
            deltas[task] = {name.removesuffix(".weight"): source[name] for name in source}
        out[init] = interference_matrix(deltas, stats_by_task)
    return out


def _factors(adapter_dir: Path) -> dict[str, tuple[Tensor, Tensor]]:
    """module -> (s·B (d_out, r), A (r, d_in)) of one saved adapter, under the statistics' names."""
    (source,) = load_adapters([adapter_dir])
    with source.opened():
        return {name.removesuffix(".weight"): source.factors(name) for name in source}


def budget_stage(
    cfg: ExperimentConfig,
    run_dir: Path,
    adapters: Mapping[tuple[str, str], Path],
    stats_by_task: StatsByTask,
    matrices: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
) -> dict[str, list[dict]]:
    """Drift, energies and interference at every budget (``budgets/0`` = A as initialised) and
    of the final adapters, placed at the steps their ``training.json`` records; ``matrices``
    (:func:`interference_stage`'s, per init) spare computing the final adapters' ratios again.

    Returns ``{"rows": [...], "per_task": [...]}`` (:func:`osrm.drift.budget_diagnostics`); a
    checkpoint at the final step gives one row (the final adapters')."""
    rows, per_task = [], []
    for init in cfg.lora.inits:
        snapshots = {
            k: Snapshot(k, {t: _factors(budget_dir(run_dir, k, init, t)) for t in cfg.task_names})
            for k in [0, *cfg.train.checkpoints]
        }
        steps = {t: read_json(adapters[init, t] / RECORD_FILE, "training record")["steps"]
                 for t in cfg.task_names}  # fmt: skip
        final = max(steps.values())  # tasks differ only with train.epochs
        factors = {t: _factors(adapters[init, t]) for t in cfg.task_names}
        snapshots[final] = Snapshot(final, factors, steps, (matrices or {}).get(init))
        sub = cfg.subspace
        got = budget_diagnostics(
            init,
            list(snapshots.values()),
            stats_by_task,
            weighting=sub.weighting,
            center=sub.center,
        )
        rows += got[0]
        per_task += got[1]
    return {"rows": rows, "per_task": per_task}
