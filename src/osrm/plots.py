"""Report plots (matplotlib, PNG): λ-robustness curves, best-setting bars, interference maps,
and with train.checkpoints the scores, interference and drift of A against the step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import product
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from osrm.artifacts import atomic_file  # noqa: E402
from osrm.report import parse_hp  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _scale_of(hp: str) -> float | None:
    scale = parse_hp(hp).get("scale")
    return None if scale is None else float(scale)


def plot_scale_curves(rows: Sequence[Mapping], path: Path, method: str = "task_arithmetic") -> Path:
    """Normalised average vs the merging scale λ, one line per init (the robustness claim)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for init in dict.fromkeys(r["init"] for r in rows):
        points = sorted(
            (_scale_of(r["hp"]), r["norm_avg"])
            for r in rows
            if r["init"] == init and r["method"] == method and r.get("norm_avg") is not None
            and _scale_of(r["hp"]) is not None
        )  # fmt: skip
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=init)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="scale λ", ylabel="normalised average (merged / individual)",
           title=f"{method}: robustness to λ")  # fmt: skip
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def best_settings(rows: Sequence[Mapping]) -> list[Mapping]:
    """Per (init, method), the merged row with the highest normalised average."""
    best: dict[tuple[str, str], Mapping] = {}
    for r in rows:
        if r["model"] != "merged" or r.get("norm_avg") is None:
            continue
        key = (r["init"], r["method"])
        if key not in best or r["norm_avg"] > best[key]["norm_avg"]:
            best[key] = r
    return list(best.values())


def plot_best_bars(rows: Sequence[Mapping], tasks: Sequence[str], path: Path) -> Path:
    """Per-task scores of each method at its best setting, one panel per init."""
    best = best_settings(rows)
    inits = list(dict.fromkeys(r["init"] for r in rows))
    width_in = max(7.0, 1.3 * len(tasks) + 3)
    fig, axes = plt.subplots(len(inits), 1, figsize=(width_in, 3.2 * len(inits)), squeeze=False,
                             sharey=True, constrained_layout=True)  # fmt: skip
    for ax, init in zip(axes[:, 0], inits, strict=True):
        series = [r for r in rows if r["init"] == init and r["model"] == "individual"]
        series += [r for r in best if r["init"] == init]
        width = 0.8 / max(len(series), 1)
        for i, r in enumerate(series):
            label = r["method"] or r["model"]
            xs = [k + i * width for k in range(len(tasks))]
            ax.bar(xs, [r.get(t) or 0.0 for t in tasks], width=width, label=label)
        ax.set_xticks(
            [k + 0.4 - width / 2 for k in range(len(tasks))], tasks, rotation=15, fontsize=8
        )
        ax.set(title=f"init: {init}", ylabel="score")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def plot_interference(
    matrices: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path
) -> Path:
    """Heat maps of ‖ΔW_j X_tᵀ‖ / ‖ΔW_t X_tᵀ‖ (rows: adapter j, columns: task t), one per init."""
    inits = list(matrices)
    fig, axes = plt.subplots(1, len(inits), figsize=(3.6 * len(inits) + 2.0, 4.2), squeeze=False,
                             constrained_layout=True)  # fmt: skip
    vmax = max(v for m in matrices.values() for row in m.values() for v in row.values())
    for i, (ax, init) in enumerate(zip(axes[0], inits, strict=True)):
        tasks = list(matrices[init])
        grid = [[matrices[init][j][t] for t in tasks] for j in tasks]
        image = ax.imshow(grid, vmin=0, vmax=vmax, cmap="viridis")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(tasks)), tasks if i == 0 else [], fontsize=7)
        ax.set(title=f"{init}", xlabel="inputs of task t", ylabel="adapter j" if i == 0 else "")
        for a, b in product(range(len(tasks)), repeat=2):
            ax.text(b, a, f"{grid[a][b]:.2f}", ha="center", va="center", fontsize=6, color="white")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    return _save(fig, path)


def _series(rows: Sequence[Mapping], init: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one init's rows where ``key`` has a finite value, by step."""
    points = [(r["step"], r.get(key)) for r in rows if r["init"] == init]
    return sorted((s, v) for s, v in points if v is not None and v == v)  # v == v: not NaN


def _step_panels(
    rows: Sequence[Mapping], panels: Sequence[tuple[str, Sequence[tuple[str, str]]]], path: Path
) -> Path:
    """One panel per ``(y label, [(key, line style), ...])``: each key against the training
    step, one colour per init."""
    inits = list(dict.fromkeys(r["init"] for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False,
                             constrained_layout=True)  # fmt: skip
    for ax, (ylabel, keys) in zip(axes[0], panels, strict=True):
        for colour, init in enumerate(inits):
            for key, style in keys:
                points = _series(rows, init, key)
                if points:
                    label = init if len(keys) == 1 else f"{init}: {key}"
                    ax.plot(*zip(*points, strict=True), style, color=f"C{colour}", label=label)
        ax.set(xlabel="training step", ylabel=ylabel)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_budget_scores(rows: Sequence[Mapping], path: Path) -> Path:
    """Best merged normalised and absolute averages against the step, one line per init."""
    panels = [
        ("best merged norm. avg", [("best_norm_avg", "o-")]),
        ("best merged avg", [("best_avg", "o-")]),
    ]
    return _step_panels(rows, panels, path)


def plot_budget_interference(rows: Sequence[Mapping], path: Path) -> Path:
    """Mean off-diagonal interference ratio against the step, one line per init."""
    return _step_panels(rows, [("mean interference ratio", [("interference", "o-")])], path)


def plot_budget_drift(rows: Sequence[Mapping], path: Path) -> Path:
    """Mean principal angle of A from its init (degrees), and the own (solid) and other tasks'
    (dashed) input energy of A's row space, against the step."""
    energies = [("own_energy", "o-"), ("other_energy", "s--")]
    panels = [("drift of A from step 0 (mean angle, degrees)", [("drift_deg", "o-")]),
              ("energy of A's row space", energies)]  # fmt: skip
    return _step_panels(rows, panels, path)
