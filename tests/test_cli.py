"""The command line on real offline data: the quick demo end to end, one-line errors, help."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from osrm.cli import COMMANDS, main
from osrm.report import read_results
from osrm.stats import load_stats

SMALL = [
    "train.steps=4", "stats.examples=24", "eval.max_eval_examples=24",
    "merge.methods={task_arithmetic: {scale: [0.5, 1.0]}, ties: {density: 0.2}}",
]  # fmt: skip


@pytest.mark.slow
def test_quick_demo_small_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["demo", "--quick", "--run-dir", str(run), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "| lora | individual |" in out and "| osrm | merged | ties |" in out
    assert "report:" in out and (run / "report.html").is_file()
    results = read_results(run / "results.jsonl")
    assert {r.task for r in results} == {"trec", "sms_spam", "vader_movies"}
    assert len(results) == 2 * (2 + 3) * 3  # inits x (base, individual, 3 merges) x tasks
    cov = json.loads((run / "subspace_report.json").read_text())["modes"]["cov"]
    for row in cov:  # OSRM's A sees less of the other tasks than a random A does
        assert row["other"] < row["other_random"]
    stats, meta = load_stats(run / "stats" / "trec.safetensors")
    assert meta.n_examples == 24 and meta.max_length == 64 and len(stats) == 12


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
