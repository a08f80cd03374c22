"""`osrm run` end to end on a tiny random model with synthetic tasks; stage commands; re-runs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from conftest import save_tiny_bert, write_synthetic_tasks
from osrm.cli import main
from osrm.errors import OsrmError
from osrm.report import read_results

MERGE = {
    "task_arithmetic": {"scale": [0.5, 1.0]},
    "ties": {"density": 0.3},
    "dare_ties": {"density": 0.5},
    "knots": {"inner": "ties", "density": 0.3},
    "tsv": None,
    "regmean": {"alpha": 0.9},
}


@pytest.fixture
def tiny_run(tmp_path):
    model_dir = save_tiny_bert(tmp_path / "tiny-bert")
    (tmp_path / "data").mkdir()
    config = {
        "run_dir": str(tmp_path / "run"),
        "seed": 0,
        "model": {"name": str(model_dir)},
        "tasks": write_synthetic_tasks(tmp_path / "data"),
        "lora": {
            "rank": 4,
            "alpha": 8,
            "target_modules": ["query", "value"],
            "inits": ["lora", "osrm"],
        },
        "stats": {"examples": 32, "batch_size": 16, "max_length": 16},
        "subspace": {"modes": ["cov", "contrast"]},
        "train": {"steps": 8, "lr": 1e-2, "batch_size": 8, "max_length": 16, "checkpoint_every": 4},
        "merge": {"methods": MERGE},
        "eval": {"max_eval_examples": 16, "batch_size": 16},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, tmp_path / "run"


def test_run_end_to_end_then_rerun_skips_everything(tiny_run, capsys, caplog):
    config, run_dir = tiny_run
    assert main(["run", str(config)]) == 0
    out = capsys.readouterr().out
    assert "| init | model | method |" in out and "report:" in out
    results = read_results(run_dir / "results.jsonl")
    settings = {r.key for r in results}
    # per init: base + individual + 2 TA scales + 5 other methods
    assert len(settings) == 2 * (2 + 2 + 5)
    assert len(results) == 3 * len(settings)
    assert all(math.isfinite(r.score) for r in results)
    md = (run_dir / "results.md").read_text()
    assert md.index("## Verdict") < md.index("## Scores")  # the report opens with its verdict
    scores = md.split("\n## Scores\n")[1]
    table = next(line for line in scores.splitlines() if line.startswith("| init"))
    header = [c.strip() for c in table.split("|")[1:-1]]
    assert header == [
        "init",
        "model",
        "method",
        "hyperparameters",
        "low",
        "high",
        "reg",
        "avg",
        "norm. avg",
    ]
    csv_rows = (run_dir / "results.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + len(settings) and "nan" not in "".join(csv_rows).lower()
    for name in ("report.html", "plot_scale.png", "plot_best.png", "plot_interference.png",
                 "interference.json", "subspace_report.json", "config.yaml"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    inter = json.loads((run_dir / "interference.json").read_text())
    assert set(inter) == {"lora", "osrm"} and inter["osrm"]["low"]["low"] == pytest.approx(1.0)
    # a re-run does no work: every artifact is reused, no result is added
    stamps = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.safetensors")}
    caplog.clear()
    caplog.set_level("INFO")
    assert main(["run", str(config)]) == 0
    assert len(read_results(run_dir / "results.jsonl")) == len(results)
    assert stamps == {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.safetensors")}
    messages = " ".join(caplog.messages)
    assert "reusing" in messages and "training" not in messages and "merging" not in messages
    # extending the merge grid only runs the new settings
    assert main(["run", str(config), "merge.methods={task_arithmetic: {scale: [0.5, 0.7]}}"]) == 0
    assert len(read_results(run_dir / "results.jsonl")) == len(results) + 2 * 3


def test_changed_settings_refuse_the_old_run_dir(tiny_run, capsys):
    config, run_dir = tiny_run
    assert main(["stats", str(config)]) == 0
    assert "| cov |" in capsys.readouterr().out
    assert main(["stats", str(config), "train.steps=9"]) == 2
    assert "different 'train' section" in capsys.readouterr().err


def test_merge_command_dense_and_lora_outputs_load(tiny_run, tmp_path, capsys):
    config, run_dir = tiny_run
    assert main(["train", str(config)]) == 0
    capsys.readouterr()
    assert main(["train", str(config), "lora.inits=[osrm]"]) == 2  # pinned: inits changed
    capsys.readouterr()
    adapters = [str(run_dir / "adapters" / "osrm" / t) for t in ("low", "high")]
    out = tmp_path / "merged-lora"
    assert main(["merge", *adapters, "--method", "task_arithmetic", "--scale", "0.5",
                 "--format", "lora", "--out", str(out)]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["exact"] is True and report["max_rank"] == 8
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "tiny-bert")
    assert isinstance(PeftModel.from_pretrained(base, out), PeftModel)
    dense = tmp_path / "merged-dense"
    assert (
        main(["merge", *adapters, "--method", "ties", "--density", "0.3", "--out", str(dense)]) == 0
    )
    capsys.readouterr()
    assert main(["eval", "--merged", str(dense), "--task", "low"]) == 2  # not a registry task
    assert "unknown task 'low'" in capsys.readouterr().err
    assert main(["merge", *adapters, "--method", "ties", "--out", str(dense)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["merge", *adapters, "--method", "tie", "--out", str(tmp_path / "x")]) == 2
    assert "tie" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_report_command_rebuilds(tiny_run, capsys):
    config, run_dir = tiny_run
    assert main(["report", str(run_dir)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_contrast_frozen_init_keeps_a_and_uses_its_own_lr_and_steps(tiny_run):
    from safetensors.torch import load_file

    config, run_dir = tiny_run
    cfg = yaml.safe_load(config.read_text())
    cfg["lora"]["inits"] = ["contrast", "contrast_frozen"]
    cfg["train"]["frozen_a_lr"] = 5e-2
    cfg["train"]["frozen_a_steps"] = cfg["train"]["steps"] + 2
    config.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(config)]) == 0
    task = cfg["tasks"][0]["name"] if isinstance(cfg["tasks"][0], dict) else cfg["tasks"][0]
    weights, records, provs = {}, {}, {}
    for init in ("contrast", "contrast_frozen"):
        path = run_dir / "adapters" / init / task
        weights[init] = load_file(path / "adapter_model.safetensors")
        records[init] = json.loads((path / "training.json").read_text())
        provs[init] = json.loads((path / "osrm_provenance.json").read_text())
    assert records["contrast"]["train"]["lr"] == pytest.approx(1e-2)
    assert records["contrast_frozen"]["train"]["lr"] == pytest.approx(5e-2)
    # the step count too: the recorded settings and the optimizer steps actually taken
    assert records["contrast"]["steps"] == cfg["train"]["steps"]
    assert records["contrast_frozen"]["steps"] == cfg["train"]["steps"] + 2
    assert records["contrast_frozen"]["train"]["steps"] == cfg["train"]["steps"] + 2
    assert provs["contrast_frozen"]["freeze_a"] and not provs["contrast"]["freeze_a"]
    a_keys = [k for k in weights["contrast"] if "lora_A" in k]
    b_keys = [k for k in weights["contrast"] if "lora_B" in k]
    assert a_keys and b_keys
    # Both start from the same contrast bases: the trained A moved, the frozen one did not,
    # so the frozen A has orthonormal rows (the bases) and the trained one has drifted.
    for key in a_keys:
        frozen = weights["contrast_frozen"][key].double()
        gram = frozen @ frozen.T
        assert (gram - torch.eye(gram.shape[0], dtype=gram.dtype)).abs().max() < 1e-5
        assert not torch.allclose(weights["contrast"][key], weights["contrast_frozen"][key])
    assert all(weights["contrast_frozen"][k].abs().max() > 0 for k in b_keys)


def test_run_dir_of_an_older_version_is_not_refused(tiny_run):
    """A setting added later (here train.frozen_a_steps, at its default) is not a changed setting;
    a setting that really differs still is."""
    from osrm.stages.preparation import prepare

    config, run_dir = tiny_run
    prepare(config)
    recorded = run_dir / "config.yaml"
    old = yaml.safe_load(recorded.read_text())
    del old["train"]["frozen_a_steps"]  # what an osrm without that setting wrote
    recorded.write_text(yaml.safe_dump(old))
    assert prepare(config).train.frozen_a_steps is None
    old["train"]["lr"] = 0.5
    recorded.write_text(yaml.safe_dump(old))
    with pytest.raises(OsrmError, match="different 'train' section"):
        prepare(config)


def test_clear_run_dir_removes_only_osrm_runs(tiny_run, tmp_path):
    from osrm.rundir import clear_run_dir
    from osrm.stages.preparation import prepare

    config, run_dir = tiny_run
    prepare(config)
    clear_run_dir(run_dir)
    assert not run_dir.exists()
    clear_run_dir(run_dir)  # nothing there: nothing to do
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(OsrmError, match="holds no osrm run"):
        clear_run_dir(other)
    assert (other / "notes.txt").read_text() == "keep"
