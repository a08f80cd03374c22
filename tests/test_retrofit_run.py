"""`merge.retrofit` and the grid's `weights` axis inside `osrm run` (tiny workspace, real peft
adapters): retrofitted series scored and merged as one more init, at every budget, reused on a
re-run; auto-weight settings as their own result rows."""

from __future__ import annotations

import json

import pytest

from osrm.artifacts import file_sha256
from osrm.cli import main
from osrm.config import dump_config, load_config
from osrm.diagnostics import summarise_interference
from osrm.report import read_results
from osrm.retrofit import RETROFIT_FILE
from osrm.rundir import adapter_dir, budget_dir, retrofit_dir
from tiny_workspace import make_workspace, tree

MERGE = {
    "methods": {"task_arithmetic": {"scale": 1.0, "weights": ["given", "auto"]},
                "ties": {"density": 0.5, "weights": "auto-per-module"}},
    "retrofit": {"mu": [1.0], "inits": ["lora"]},
}  # fmt: skip


@pytest.fixture(scope="module")
def retro_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrofit_run")
    config = make_workspace(root, n_tasks=2, merge=MERGE)
    run = root / "run"
    assert main(["-q", "run", str(config), "train.checkpoints=[4]"]) == 0
    return config, run


def test_retrofitted_series_are_scored_and_merged_at_every_step(retro_run):
    _, run = retro_run
    results = read_results(run / "results.jsonl")
    label = "lora+rf1"
    for step in (4, None):
        mine = [r for r in results if r.init == label and r.step == step]
        kinds = {(r.kind, r.method, r.hp) for r in mine}
        assert ("individual", "", "") in kinds
        assert ("merged", "task_arithmetic", "scale=1.0,weights=auto") in kinds
        assert ("merged", "ties", "density=0.5,weights=auto-per-module") in kinds
        for task in ("low", "high"):
            source = adapter_dir(run, "lora", task) if step is None else budget_dir(
                run, step, "lora", task)  # fmt: skip
            record = json.loads((retrofit_dir(run, step, label) / task / RETROFIT_FILE).read_text())
            assert record["mu"] == 1.0
            assert record["source"]["sha256"] == file_sha256(source / "adapter_model.safetensors")
    # the grid's weights axis: given and auto are two settings of every series
    hps = {r.hp for r in results if r.init == "osrm" and r.method == "task_arithmetic"}
    assert hps == {"scale=1.0", "scale=1.0,weights=auto"}
    matrices = json.loads((run / "interference.json").read_text())
    means = summarise_interference(matrices)
    assert set(means) == {"lora", "osrm", label}
    assert means[label] < means["lora"]  # retrofitting removes output on the other task


def test_rerun_reuses_every_retrofit_and_score(retro_run, tmp_path):
    config, run = retro_run
    before = tree(run)
    assert main(["-q", "run", str(config), "train.checkpoints=[4]"]) == 0
    after = tree(run)
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not [k for k in changed if k.startswith(("retrofit/", "results.jsonl"))]


def test_config_without_retrofit_dumps_as_before(retro_run):
    config, _ = retro_run
    cfg = load_config(config, ["merge.retrofit=null"])
    assert "retrofit:" not in dump_config(cfg)
    with pytest.raises(Exception, match="merge.retrofit.inits"):
        load_config(config, ["merge.retrofit={mu: [1.0], inits: [contrast]}"])


def test_a_method_may_list_several_grids(retro_run):
    """The union of each grid's product, without repeats, in order; each grid checked."""
    from osrm.stages.evaluation import merge_grid

    config, _ = retro_run
    grids = (
        "merge.methods={task_arithmetic: "
        "[{scale: [0.5, 1.0]}, {scale: 1.0, weights: auto}, {scale: 0.5}]}"
    )
    cfg = load_config(config, [grids])
    assert merge_grid(cfg) == [
        ("task_arithmetic", {"scale": 0.5}),
        ("task_arithmetic", {"scale": 1.0}),
        ("task_arithmetic", {"scale": 1.0, "weights": "auto"}),
    ]
    bad = "merge.methods={ties: [{density: 0.2}, {density: 2.0}]}"
    with pytest.raises(Exception, match="merge.methods.ties: density"):
        merge_grid(load_config(config, [bad]))
