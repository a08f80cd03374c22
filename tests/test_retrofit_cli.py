"""`osrm retrofit` and `osrm merge --weights auto` from the command line, on a tiny run's real
adapters and statistics: outputs, records, and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import PeftModel

from osrm.cli import main
from osrm.merging import lora_deltas, read_manifest
from osrm.retrofit import RETROFIT_FILE
from osrm.rundir import adapter_dir, stats_file
from tiny_workspace import make_workspace, tree


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny workspace's 3 tasks trained with plain LoRA; (run_dir, adapters, stats)."""
    root = tmp_path_factory.mktemp("retrofit")
    config = make_workspace(root, inits=("lora",))
    run = root / "run"
    assert main(["-q", "train", str(config), f"run_dir={run}"]) == 0
    tasks = ["low", "high", "reg"]
    return (
        run,
        [str(adapter_dir(run, "lora", t)) for t in tasks],
        [str(stats_file(run, t)) for t in tasks],
    )


def test_retrofit_then_merge_with_auto_weights(trained, tmp_path, capsys):
    run, adapters, stats = trained
    out = tmp_path / "retro"
    code = main(["-q", "retrofit", *adapters, "--stats", *reversed(stats), "--mu", "1",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert sorted(printed) == ["high", "low", "reg"]
    for task, summary in printed.items():
        record = json.loads((out / task / RETROFIT_FILE).read_text())
        assert record["mu"] == 1.0 and record["overall"] == {
            "kept": summary["kept"], "removed": summary["removed"]
        }  # fmt: skip
        assert 0 < summary["removed"] <= 1 and summary["kept"] <= 1
        before, after = lora_deltas(adapter_dir(run, "lora", task)), lora_deltas(out / task)
        assert after.provenance == before.provenance  # the task name travels with it
        assert any(not torch.equal(before[n], after[n]) for n in before)
    from osrm.models import load_model

    base, _ = load_model(str(run.parent / "tiny-bert"), num_labels=2)
    assert isinstance(PeftModel.from_pretrained(base, str(out / "low")), PeftModel)
    merged = tmp_path / "merged"
    retro = [str(out / t) for t in ("low", "high", "reg")]
    code = main(["-q", "merge", *retro, "--method", "task_arithmetic", "--weights", "auto",
                 "--stats", *stats, "--format", "lora", "--out", str(merged)])  # fmt: skip
    assert code == 0
    weights = read_manifest(merged)["weights"]
    assert len(weights) == 3 and all(w > 0 for w in weights)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mu", "-1"], "--mu: expected a number >= 0"),
        (["--mu", "nan"], "--mu: expected a finite number"),
        (["--twice"], "is given twice"),
        (["--one"], "expected 2 or more adapters"),
        (["--missing-stats"], "no statistics for task 'reg'"),
        (["--other-base"], "statistics of other base weights"),
        (["--exists"], "already exists; pass --force"),
    ],
)
def test_bad_retrofit_input_is_one_line_and_writes_nothing(trained, tmp_path, capsys, args,
                                                           message):  # fmt: skip
    run, adapters, stats = trained
    out, mu = tmp_path / "retro", ["--mu", "0.5"]
    if args[0] == "--mu":
        mu = args
    elif args == ["--twice"]:
        adapters = [adapters[0], adapters[0], adapters[1]]
    elif args == ["--one"]:
        adapters, stats = adapters[:1], stats[:1]
    elif args == ["--missing-stats"]:
        stats = stats[:2]
    elif args == ["--other-base"]:
        other = tmp_path / "reg.safetensors"
        shutil.copy(stats[2], other)
        _rewrite_fingerprint(other)
        stats = [*stats[:2], str(other)]
    elif args == ["--exists"]:
        out.mkdir()
    before = tree(tmp_path)
    try:  # argparse exits (status 2) on a bad --mu before any command runs
        code = main(["-q", "retrofit", *adapters, "--stats", *stats, *mu, "--out", str(out)])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert tree(tmp_path) == before


def _rewrite_fingerprint(path) -> None:
    """Statistics that claim other base weights (their metadata's fingerprint changed)."""
    from osrm.stats import load_stats, save_stats

    stats, meta = load_stats(path)
    save_stats(path, stats, type(meta)(**{**meta.__dict__, "fingerprint": "0" * 16}))
