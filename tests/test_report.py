"""Result tables, interference ratios and plots."""

from __future__ import annotations

import json

import pytest
import torch

from osrm.diagnostics import interference_matrix
from osrm.errors import OsrmError
from osrm.plots import best_settings, plot_best_bars, plot_interference, plot_scale_curves
from osrm.report import (
    Result,
    append_results,
    csv_table,
    hp_string,
    markdown_table,
    read_interference,
    read_results,
    results_table,
    table_columns,
)
from osrm.stats import LayerStats

TASKS = ["a", "b"]


def results() -> list[Result]:
    out = [Result("lora", "individual", t, "accuracy", s) for t, s in (("a", 0.8), ("b", 0.5))]
    out += [Result("lora", "base", t, "accuracy", s) for t, s in (("a", 0.4), ("b", 0.25))]
    for scale, (sa, sb) in ((0.5, (0.6, 0.5)), (1.0, (0.4, 0.45))):
        hp = hp_string({"scale": scale})
        out += [Result("lora", "merged", "a", "accuracy", sa, "task_arithmetic", hp),
                Result("lora", "merged", "b", "accuracy", sb, "task_arithmetic", hp)]  # fmt: skip
    return out


def test_table_pivot_average_and_normalisation(tmp_path):
    append_results(tmp_path / "r.jsonl", results()[:3])
    append_results(tmp_path / "r.jsonl", results()[3:])
    loaded = read_results(tmp_path / "r.jsonl")
    assert loaded == results()
    rows = results_table(loaded, TASKS)
    assert [(r["model"], r["hp"]) for r in rows] == [
        ("base", ""), ("individual", ""), ("merged", "scale=0.5"), ("merged", "scale=1.0")
    ]  # fmt: skip
    base, indiv, half, full = rows
    assert indiv["avg"] == pytest.approx(0.65) and indiv["norm_avg"] == pytest.approx(1.0)
    assert half["avg"] == pytest.approx(0.55)
    assert half["norm_avg"] == pytest.approx((0.6 / 0.8 + 0.5 / 0.5) / 2)
    assert base["norm_avg"] == pytest.approx(0.5)
    assert best_settings(rows) == [half]
    md = markdown_table(rows, table_columns(TASKS))
    assert (
        md.splitlines()[0]
        == "| init | model | method | hyperparameters | a | b | avg | norm. avg |"
    )
    assert "| lora | merged | task_arithmetic | scale=0.5 | 0.600 | 0.500 | 0.550 | 0.875 |" in md
    csv = csv_table(rows, table_columns(TASKS)).splitlines()
    assert csv[0] == "init,model,method,hp,a,b,avg,norm_avg" and len(csv) == 5


def test_incomplete_rows_have_no_average():
    rows = results_table(results()[:5], TASKS)  # the scale=0.5 merge lacks task b
    merged = [r for r in rows if r["model"] == "merged"][0]
    assert "avg" not in merged


def test_interference_matrix_closed_form():
    # task a's inputs live on e1, task b's on e2; adapter a reads e1 (and a little e2)
    g_a, g_b = torch.diag(torch.tensor([1.0, 0, 0])), torch.diag(torch.tensor([0, 4.0, 0]))
    stats = {t: {"m": LayerStats(g.double() * 10, torch.zeros(3, dtype=torch.float64), 10)}
             for t, g in (("a", g_a), ("b", g_b))}  # fmt: skip
    delta_a = torch.tensor([[2.0, 0.5, 0.0]])  # (d_out=1, d_in=3)
    delta_b = torch.tensor([[0.0, 1.0, 7.0]])
    ratio = interference_matrix({"a": {"m": delta_a}, "b": {"m": delta_b}}, stats)
    assert ratio["a"]["a"] == pytest.approx(1.0) and ratio["b"]["b"] == pytest.approx(1.0)
    assert ratio["a"]["b"] == pytest.approx(0.5)  # ‖ΔW_a x_b‖ / ‖ΔW_b x_b‖ = 0.5·2 / 1·2
    assert ratio["b"]["a"] == pytest.approx(0.0)  # adapter b never reads e1


def test_plots_are_written(tmp_path):
    rows = results_table(results(), TASKS)
    for path in (
        plot_scale_curves(rows, tmp_path / "lambda.png"),
        plot_best_bars(rows, TASKS, tmp_path / "bars.png"),
        plot_interference(
            {"lora": {"a": {"a": 1.0, "b": 0.3}, "b": {"a": 0.2, "b": 1.0}}}, tmp_path / "heat.png"
        ),  # fmt: skip
    ):
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


@pytest.mark.parametrize(
    "data", [{"lora": {}}, {"lora": {"a": {"b": 1.0}}}, {"lora": {"a": {"a": 1.0}, "b": {}}}]
)
def test_interference_matrices_must_be_square(tmp_path, data):
    """Found by the CLI fuzz test: a matrix without cells reached the plot (max of nothing)."""
    path = tmp_path / "interference.json"
    path.write_text(json.dumps(data))
    with pytest.raises(OsrmError, match="not a square matrix over its tasks"):
        read_interference(path)
