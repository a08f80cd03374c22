"""docs/RESULTS.md (bench/report.py): picking and pooling the quality settings shown, and the
init × method tables of them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from osrm.report import markdown_table
from report_common import HEADLINE, METHOD_ORDER, Row, Stat, mean_spread


def norm_mean(row: Row) -> float:
    """A quality row's normalised average, mean over seeds."""
    return row["norm_avg"]["mean"]  # type: ignore[index]


def merged_rows(agg: Mapping) -> list[Row]:
    """The merged rows of an aggregate (or a flat table) that have a normalised average."""
    return [r for r in agg["rows"] if r["model"] == "merged" and r.get("norm_avg") is not None]


def methods_of(rows: Sequence[Row]) -> list[str]:
    """Merge methods: the headline ones, the others in METHOD_ORDER, then any unknown ones."""
    order = [*HEADLINE, *METHOD_ORDER]
    found = list(dict.fromkeys(str(r["method"]) for r in rows))
    return sorted(found, key=lambda m: order.index(m) if m in order else len(order))


def best_settings(
    rows: Sequence[Row], score: Callable[[Row], float] = norm_mean
) -> dict[tuple[str, str], Row]:
    """Per (init, method), the row with the highest ``score`` over the method's grid.

    Args:
        rows: merged rows (aggregated over seeds, or flat ones with a ``score``).
        score: what to maximise; by default the mean normalised average over seeds.

    Returns:
        ``{(init, method): row}`` in the order the pairs first appear.
    """
    best: dict[tuple[str, str], Row] = {}
    for r in rows:
        key = (str(r["init"]), str(r["method"]))
        if key not in best or score(r) > score(best[key]):
            best[key] = r
    return best


def without_seed(hp: str) -> str:
    """A hyperparameter string without its ``seed=`` item (``density=0.5,scale=1.0``)."""
    return ",".join(i for i in hp.split(",") if i and i.partition("=")[0] != "seed")


def pool(stats: Sequence[Stat | None]) -> Stat | None:
    """Scores of disjoint groups of seeds as one: overall mean and population std, total n."""
    groups = [s for s in stats if s]
    if len(groups) <= 1:
        return groups[0] if groups else None
    n = sum(s["n"] for s in groups)
    mean = sum(s["n"] * s["mean"] for s in groups) / n
    var = sum(s["n"] * (s["spread"] ** 2 + (s["mean"] - mean) ** 2) for s in groups) / n
    return {"mean": mean, "spread": var**0.5, "n": n}


def pool_seeded(rows: Sequence[Row]) -> list[Row]:
    """Aggregate rows whose settings differ only by ``seed=``, pooled into one row.

    The random-drop methods (dare_*) take the run's seed as a hyperparameter, so bench/quality.py
    aggregates each seed's row on its own (n = 1); here they become one row over all seeds.
    """
    groups: dict[tuple[str, ...], list[Row]] = {}
    for r in rows:
        key = (str(r["init"]), str(r["model"]), str(r["method"]), without_seed(str(r["hp"])))
        groups.setdefault(key, []).append(r)
    out: list[Row] = []
    for (init, model, method, hp), group in groups.items():
        scores = dict.fromkeys(
            k for r in group for k in r if k not in ("init", "model", "method", "hp")
        )
        out.append(
            {
                "init": init,
                "model": model,
                "method": method,
                "hp": hp,
                **{k: pool([r.get(k) for r in group]) for k in scores},
            }
        )  # type: ignore[misc]
    return out


def pooled(data: dict | None) -> dict | None:
    """A quality result with :func:`pool_seeded` applied to its aggregate rows (a copy)."""
    if data is None or not isinstance(data.get("aggregate"), dict):
        return data
    rows = data["aggregate"].get("rows")
    if not isinstance(rows, list):
        return data
    seeded = any("seed=" in str(r.get("hp", "")) for r in rows if isinstance(r, dict))
    aggregate = {**data["aggregate"], "rows": pool_seeded(rows)}
    return {**data, "aggregate": aggregate, "pooled_seed_settings": seeded}


def hp_items(hp: str) -> frozenset[str]:
    """The ``k=v`` items of a hyperparameter string, without ``seed`` (a draw, not a setting)."""
    return frozenset(i for i in hp.split(",") if i and i.partition("=")[0] != "seed")


def fixed_settings(rows: Sequence[Row], fixed: Mapping[str, str]) -> dict[tuple[str, str], Row]:
    """Per (init, method), the row at the method's fixed setting (``fixed``: method -> hp).

    A row matches when its settings equal the fixed string's, ignoring a ``seed=`` item (the
    random-drop methods carry one that the fixed strings may leave out).
    """
    return {
        (str(r["init"]), str(r["method"])): r
        for r in rows
        if r["method"] in fixed and hp_items(str(r["hp"])) == hp_items(fixed[str(r["method"])])
    }


def pick_table(picks: Mapping[tuple[str, str], Row], inits: Sequence[str]) -> str:
    """Init (rows) × method (columns) of ``mean ± spread``; the best init per method in bold."""
    methods = methods_of(list(picks.values()))
    rows: list[dict[str, object]] = [{"init": i} for i in inits]
    for m in methods:
        means = {i: norm_mean(picks[i, m]) for i in inits if (i, m) in picks}
        top = max(means, key=means.__getitem__)
        for row in rows:
            if (row["init"], m) in picks:
                cell = mean_spread(picks[row["init"], m]["norm_avg"])  # type: ignore[arg-type]
                row[m] = f"**{cell}**" if row["init"] == top else cell
    return markdown_table(rows, {"init": "init", **{m: m for m in methods}})


def hp_table(picks: Mapping[tuple[str, str], Row], inits: Sequence[str]) -> str:
    """Init × method of the chosen hyperparameters (``-`` for a method without any)."""
    methods = methods_of(list(picks.values()))
    rows = [
        {"init": i, **{m: picks[i, m]["hp"] or "-" for m in methods if (i, m) in picks}}
        for i in inits
    ]
    return markdown_table(rows, {"init": "init", **{m: m for m in methods}})


def top_pick(picks: Mapping[tuple[str, str], Row], init: str) -> tuple[str, Row] | None:
    """The method (and its row) with the init's highest normalised average, if any."""
    methods = methods_of([r for (i, _), r in picks.items() if i == init])
    mine = [(m, picks[init, m]) for m in methods]  # ties go to the first in column order
    return max(mine, key=lambda mr: norm_mean(mr[1])) if mine else None
