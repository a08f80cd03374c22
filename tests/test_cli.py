"""The command line on real offline data: the quick demo end to end, one-line errors, help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import DEMO_INIT, DEMO_TASKS
from osrm.cli import COMMANDS, main
from osrm.evaluate import evaluate
from osrm.merging import load_head, read_manifest
from osrm.models import resolve_model
from osrm.report import read_results
from osrm.stats import load_stats
from osrm.tasks.registry import get_task


@pytest.mark.slow
def test_quick_demo_small_end_to_end(quick_demo):
    run, out = quick_demo
    assert "| lora | individual |" in out and f"| {DEMO_INIT} | merged | ties |" in out
    assert "report:" in out and (run / "report.html").is_file()
    results = read_results(run / "results.jsonl")
    assert {r.task for r in results} == set(DEMO_TASKS)
    assert len(results) == 2 * (2 + 3) * 3  # inits x (base, individual, 3 merges) x tasks
    cov = json.loads((run / "subspace_report.json").read_text())["modes"]["cov"]
    for row in cov:  # OSRM's A sees less of the other tasks than a random A does
        assert row["other"] < row["other_random"]
    stats, meta = load_stats(run / "stats" / "trec.safetensors")
    assert meta.n_examples == 24 and meta.max_length == 64 and len(stats) == 12


def _pipeline_scores(run: Path, init: str, method: str, hp: str) -> dict[str, float]:
    rows = read_results(run / "results.jsonl")
    return {
        r.task: r.score
        for r in rows
        if (r.init, r.kind, r.method, r.hp) == (init, "merged", method, hp)
    }


# (format, method flags, the pipeline's setting they reproduce, tolerance): a dense output holds
# the same float32 weights as the in-memory merge; a LoRA output of a linear merge is exact in
# exact arithmetic but computes x(W + BA) as xW + (xA)B, so rounding may move a score slightly.
MERGED_OUTPUTS = [
    ("dense", ["--method", "ties", "--density", "0.2"], ("ties", "density=0.2"), 1e-9),
    ("lora", ["--method", "task_arithmetic", "--scale", "0.5"], ("task_arithmetic", "scale=0.5"),
     1e-3),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("fmt,flags,setting,tol", MERGED_OUTPUTS, ids=["dense", "lora"])
def test_merged_demo_adapters_score_every_task_as_the_pipeline(
    quick_demo, tmp_path, capsys, fmt, flags, setting, tol
):
    """`osrm merge` of the demo's real adapters (three label counts), `osrm eval --merged` for
    every task, and plain transformers + the documented head loader: the pipeline's scores."""
    run, _ = quick_demo
    expected = _pipeline_scores(run, DEMO_INIT, *setting)
    assert set(expected) == set(DEMO_TASKS)
    adapters = [str(run / "adapters" / DEMO_INIT / t) for t in DEMO_TASKS]
    out = tmp_path / "merged"
    assert main(["-q", "merge", *adapters, *flags, "--format", fmt, "--out", str(out)]) == 0
    common = ["--max-examples", "24", "--max-length", "64", "--batch-size", "64"]
    for task in DEMO_TASKS:
        capsys.readouterr()
        assert main(["-q", "eval", "--merged", str(out), "--task", task, *common]) == 0
        got = json.loads(capsys.readouterr().out)
        spec = get_task(task)
        assert got[spec.main_metric] == pytest.approx(expected[task], abs=tol), task
        if fmt == "dense":  # no osrm code in loading: transformers, then the head loader
            model = AutoModelForSequenceClassification.from_pretrained(out).eval()
            load_head(model, out, task)
            tokenizer = AutoTokenizer.from_pretrained(
                resolve_model(read_manifest(out)["base_model"])
            )
            plain = evaluate(model, spec, "test", tokenizer=tokenizer, max_length=64,
                             batch_size=64, seed=0, max_examples=24)  # fmt: skip
            assert plain[spec.main_metric] == pytest.approx(expected[task], abs=tol), task


@pytest.mark.slow
def test_dense_merge_is_byte_deterministic(quick_demo, tmp_path):
    run, _ = quick_demo
    adapters = [str(run / "adapters" / "lora" / t) for t in DEMO_TASKS]
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert main(["-q", "merge", *adapters, "--method", "ties", "--out", str(out)]) == 0
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*") if p.is_file())
    for rel in files:
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "osrm.cli", "demo", "--run-dir", str(tmp_path), "lora.rnak=3"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown key 'lora.rnak'" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_complete_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    text = capsys.readouterr().out
    assert info.value.code == 0 and "examples:" in text and f"osrm {command}" in text
