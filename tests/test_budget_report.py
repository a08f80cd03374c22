"""The budget axis of the report: drift of A (principal angles), energies of its row space and
interference at every train.checkpoints step, budget_diagnostics.json and the report section."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from osrm.cli import main
from osrm.config import load_config
from osrm.diagnostics import energy, summarise_interference
from osrm.drift import Snapshot, budget_diagnostics, principal_angles, row_space, subspace_energy
from osrm.rundir import PLOT_FILES, adapter_dir
from osrm.stages.diagnostics import budget_stage
from osrm.stages.reporting import budget_table
from osrm.stats import LayerStats, load_stats
from tiny_workspace import make_workspace, tree

BUDGET_PLOTS = ("budget_scores", "budget_interference", "budget_drift")
# a_subspace = rank keeps A = R·Uᵀ in span(U) exactly; what is left is the float32 rounding of
# the saved A (eps 6e-8 rad = 3.4e-6°; 2.5e-6° measured here). 1e-4° leaves 30x headroom and is
# still 10⁴x below the drift of a free A after a few steps (> 1° in these runs).
SPAN_TOL_DEG = 1e-4


def rotated(theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A0 = span(e1, e3) in R^5 and A1 with e1 rotated by theta towards e2."""
    a0 = torch.zeros(2, 5, dtype=torch.float64)
    a0[0, 0] = a0[1, 2] = 1
    a1 = a0.clone()
    a1[0, :2] = torch.tensor([math.cos(theta), math.sin(theta)], dtype=torch.float64)
    return a0, a1


@pytest.mark.parametrize("theta", [1e-7, 1e-3, 0.3, math.pi / 4, 1.2, math.pi / 2])
def test_rotation_inside_a_plane_gives_that_angle(theta):
    a0, a1 = rotated(theta)
    angles = principal_angles(a0, a1)
    torch.testing.assert_close(angles, torch.tensor([0.0, theta], dtype=torch.float64),
                               atol=1e-12, rtol=1e-9)  # fmt: skip
    # scaling and mixing the rows (A -> M·A) does not move the row space
    mix = torch.tensor([[2.0, -1.0], [0.5, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(principal_angles(3 * a0, mix @ a1), angles, atol=1e-12, rtol=1e-9)


def test_same_span_other_basis_gives_zeros_and_orthogonal_spans_pi_over_2():
    gen = torch.Generator().manual_seed(0)
    a0 = torch.randn(4, 16, generator=gen, dtype=torch.float64)
    m = torch.randn(4, 4, generator=gen, dtype=torch.float64) + 4 * torch.eye(4)
    assert principal_angles(a0, m @ a0).abs().max() < 1e-7  # float32-level inputs: < 0.1 µrad
    eye = torch.eye(16)
    angles = principal_angles(eye[:3], eye[3:7])
    torch.testing.assert_close(angles, torch.full((3,), math.pi / 2, dtype=torch.float64))


def test_rank_deficient_a_uses_its_actual_span():
    eye = torch.eye(6)
    a0 = eye[:3]
    collapsed = torch.stack([eye[0], 2 * eye[0], eye[4]])  # rank 2: e1 and e5
    torch.testing.assert_close(principal_angles(a0, collapsed),
                               torch.tensor([0.0, math.pi / 2], dtype=torch.float64))  # fmt: skip
    assert row_space(collapsed).shape == (2, 6)
    zero = torch.zeros(3, 6)
    assert principal_angles(a0, zero).shape == (0,) and principal_angles(zero, zero).shape == (0,)
    assert subspace_energy(zero, torch.eye(6)) == 0.0


def test_energy_of_a_row_space_on_a_diagonal_moment():
    c = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0]))  # trace 10
    a = torch.tensor([[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 0.0, -0.1]])  # picks coordinates 2 and 4
    assert subspace_energy(a, c) == pytest.approx(0.4, abs=1e-12)  # (3 + 1) / 10
    assert subspace_energy(7 * a, c) == pytest.approx(0.4, abs=1e-12)  # scale-free
    assert energy(a, c) == pytest.approx((25 * 3 + 0.01) / 10)  # raw A would not be
    mixed = torch.tensor([[1.0, 1.0], [1.0, -2.0]]) @ a  # same span, other basis
    assert subspace_energy(mixed, c) == pytest.approx(0.4, abs=1e-12)


def test_budget_diagnostics_on_hand_made_adapters():
    """Two tasks, one module: drift is the rotation angle, energies the known fractions."""

    def stats(diag):  # one token per unit of each coordinate's energy: E[x xᵀ] = diag(diag)
        return LayerStats(torch.diag(torch.tensor(diag, dtype=torch.float64)), torch.zeros(5), 1)

    by_task = {"a": {"m": stats([1.0, 0, 1, 0, 0])}, "b": {"m": stats([0, 1.0, 0, 0, 1])}}
    theta = 0.25
    a0, a1 = rotated(theta)
    b = torch.ones(3, 2, dtype=torch.float64)

    def snap(step, a):
        return Snapshot(step, {t: {"m": (b, a)} for t in ("a", "b")})

    rows, per_task = budget_diagnostics("x", [snap(5, a1), snap(0, a0)], by_task)
    assert [(r["init"], r["step"]) for r in rows] == [("x", 0), ("x", 5)]
    assert rows[0]["interference"] is None and rows[0]["drift_deg"] == 0
    assert rows[1]["drift_deg"] == pytest.approx(math.degrees(theta) / 2)  # angles 0 and θ
    assert rows[1]["drift_max_deg"] == pytest.approx(math.degrees(theta))
    # span(e1, e3) holds all of task a's energy and none of task b's
    a_0, b_0, a_5, b_5 = per_task
    assert (a_0["task"], a_0["own_energy"], a_0["other_energy"]) == ("a", 1.0, 0.0)
    assert (b_0["own_energy"], b_0["other_energy"]) == (0.0, 1.0)
    # rotated e1 keeps cos²θ of coordinate 1 and gains sin²θ of coordinate 2
    c, s = math.cos(theta) ** 2, math.sin(theta) ** 2
    assert a_5["own_energy"] == pytest.approx((c + 1) / 2) and a_5["other_energy"] == pytest.approx(
        s / 2
    )
    assert rows[1]["own_energy"] == pytest.approx(((c + 1) / 2 + s / 2) / 2)
    with pytest.raises(ValueError, match="no snapshot at step 0"):
        budget_diagnostics("x", [snap(5, a1)], by_task)
    # the same ΔW for both tasks: each responds to the other's inputs as much as to its own
    assert rows[1]["interference"] == pytest.approx(1.0) and a_5["interference"] == pytest.approx(
        1.0
    )


def test_budget_table_places_final_adapters_at_their_step():
    rows = [
        {"init": "i", "step": 4, "model": "individual", "method": "", "avg": 0.5},
        {"init": "i", "step": 4, "model": "merged", "method": "ties", "avg": 0.4, "norm_avg": 0.8},
        {"init": "i", "step": 4, "model": "merged", "method": "task_arithmetic", "avg": 0.45,
         "norm_avg": 0.7},
        {"init": "i", "model": "individual", "method": "", "avg": 0.6},
        {"init": "i", "model": "merged", "method": "ties", "avg": 0.3, "norm_avg": 0.5},
    ]  # fmt: skip
    diag = [{"init": "i", "step": s, "drift_deg": float(s)} for s in (0, 4, 9)]
    table = budget_table(rows, diag)
    assert [(r["step"], r["best_norm_avg"], r["best_avg"], r["individual"]) for r in table] == [
        (0, None, None, None),
        (4, 0.8, 0.45, 0.5),
        (9, 0.5, 0.3, 0.6),
    ]
    assert table[1]["task_arithmetic"] == 0.7 and table[2]["task_arithmetic"] is None
    assert table[2]["drift_deg"] == 9.0


MERGE = {"methods": {"task_arithmetic": {"scale": 0.5}, "ties": {"density": 0.5}}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny 2-task workspaces (8 steps): budgets [4]; none; osrm with a_subspace = rank."""
    root = tmp_path_factory.mktemp("budget_report")
    config = make_workspace(root, n_tasks=2, merge=MERGE)
    out = {k: root / k for k in ("some", "none", "kept")}
    assert main(["-q", "run", str(config), f"run_dir={out['some']}", "train.checkpoints=[4]"]) == 0
    assert main(["-q", "run", str(config), f"run_dir={out['none']}"]) == 0
    kept = yaml.safe_load(config.read_text())
    kept["lora"].update(a_subspace=4, inits=["osrm"])
    (root / "kept.yaml").write_text(yaml.safe_dump(kept))
    args = [f"run_dir={out['kept']}", "train.checkpoints=[2, 5]"]
    assert main(["-q", "eval", str(root / "kept.yaml"), *args]) == 0
    return config, out


def diagnostics(run) -> dict:
    return json.loads((run / "budget_diagnostics.json").read_text())


def test_budget_diagnostics_file(runs):
    _, out = runs
    data = diagnostics(out["some"])
    assert set(data) == {"osrm_version", "rows", "per_task"}
    keys = {"init", "step", "interference", "drift_deg", "drift_max_deg", "own_energy",
            "other_energy"}  # fmt: skip
    assert all(set(r) == keys for r in data["rows"])
    assert all(set(r) == keys | {"task"} for r in data["per_task"])
    assert [(r["init"], r["step"]) for r in data["rows"]] == [
        (i, s) for i in ("lora", "osrm") for s in (0, 4, 8)
    ]
    assert len(data["per_task"]) == 2 * 3 * 2
    matrices = json.loads((out["some"] / "interference.json").read_text())
    final = summarise_interference(matrices)
    for r in data["rows"]:
        if r["step"] == 0:  # A against itself: 0 up to float64 round-off; B = 0: no response
            assert r["drift_max_deg"] < 1e-9 and r["interference"] is None
        else:
            assert r["drift_deg"] > 0.1 and 0 < r["interference"] < 10
        if r["step"] == 8:  # the final adapters: the same numbers as interference.json
            assert r["interference"] == final[r["init"]]
        assert 0 < r["other_energy"] < 1 and 0 < r["own_energy"] < 1
    # at step 0 A is the OSRM basis: the energies of subspace_report.json (float64 basis, here
    # read back from float32 weights: 1e-5 relative is ~100 float32 eps)
    init_mode = json.loads((out["some"] / "subspace_report.json").read_text())["modes"]["cov"]
    start = {r["task"]: r for r in data["per_task"] if r["init"] == "osrm" and r["step"] == 0}
    for r in init_mode:
        assert start[r["task"]]["own_energy"] == pytest.approx(r["own"], rel=1e-5, abs=0)
        assert start[r["task"]]["other_energy"] == pytest.approx(r["other"], rel=1e-5, abs=0)
    osrm0 = next(r for r in data["rows"] if r["init"] == "osrm" and r["step"] == 0)
    lora0 = next(r for r in data["rows"] if r["init"] == "lora" and r["step"] == 0)
    assert osrm0["other_energy"] < lora0["other_energy"]  # what OSRM's init is for


def test_final_interference_recomputed_equals_interference_json(runs):
    """The pipeline hands the final adapters' matrices to the budget stage; computed afresh
    from the saved adapters they give the same rows (and interference.json's means)."""
    _, out = runs
    run = out["some"]
    cfg = load_config(run / "config.yaml")
    stats = {t: load_stats(run / "stats" / f"{t}.safetensors")[0] for t in cfg.task_names}
    adapters = {(i, t): adapter_dir(run, i, t) for i in cfg.lora.inits for t in cfg.task_names}
    fresh = budget_stage(cfg, run, adapters, stats)
    assert fresh == {k: v for k, v in diagnostics(run).items() if k != "osrm_version"}
    final = summarise_interference(json.loads((run / "interference.json").read_text()))
    assert {r["init"]: r["interference"] for r in fresh["rows"] if r["step"] == 8} == final


def test_a_subspace_at_rank_does_not_drift(runs):
    _, out = runs
    kept = diagnostics(out["kept"])
    assert [r["step"] for r in kept["rows"]] == [0, 2, 5, 8]
    for r in kept["rows"] + kept["per_task"]:
        assert r["drift_max_deg"] < SPAN_TOL_DEG, r
    free = [r for r in diagnostics(out["some"])["rows"] if r["init"] == "osrm" and r["step"]]
    assert len(free) == 2 and all(r["drift_max_deg"] > 1e4 * SPAN_TOL_DEG for r in free)
    assert not (out["kept"] / "results.md").exists()  # osrm eval: no report


def test_report_has_the_budget_section_only_with_budgets(runs):
    config, out = runs
    some, none = out["some"], out["none"]
    md = (some / "results.md").read_text()
    assert "## Training budgets" in md and "| init | step | best norm. avg |" in md
    budget_lines = md.split("## Training budgets")[1].splitlines()
    assert [line[:14] for line in budget_lines if line.startswith("| osrm")] == [
        "| osrm | 0 |  ",
        "| osrm | 4 | 1",
        "| osrm | 8 | 1",
    ]  # step 0 is not scored
    assert "<h2>Training budgets</h2>" in (some / "report.html").read_text()
    for key in BUDGET_PLOTS:
        assert (some / PLOT_FILES[key]).stat().st_size > 1000
        assert not (none / PLOT_FILES[key]).exists()
    assert not (none / "budget_diagnostics.json").exists()
    assert "Training budgets" not in (none / "results.md").read_text()
    assert "Training budgets" not in (none / "report.html").read_text()
    # re-running a finished run rewrites the diagnostics, scoring and training nothing again
    before = tree(some)
    (some / "budget_diagnostics.json").unlink()
    assert main(["-q", "run", str(config), f"run_dir={some}", "train.checkpoints=[4]"]) == 0
    after = tree(some)
    assert after["budget_diagnostics.json"] == before["budget_diagnostics.json"]
    assert (
        after["results.jsonl"] == before["results.jsonl"]
        and after["results.md"] == before["results.md"]
    )
    # osrm report rebuilds the same tables from the files
    assert main(["-q", "report", str(some)]) == 0
    assert (some / "results.md").read_text() == md
