"""The command line on real offline data: demo end to end, reuse, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from osrm.cli import main
from osrm.stats import load_stats

SMALL = ["tasks=[trec,sms_spam,rotten_tomatoes]", "stats.examples=24", "stats.max_length=32"]


@pytest.mark.slow
def test_demo_small_end_to_end_and_reuse(tmp_path, capsys, caplog):
    run = tmp_path / "run"
    assert main(["demo", "--run-dir", str(run), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "| cov |" in out and "| contrast |" in out and "| random A |" in out
    report = json.loads((run / "subspace_report.json").read_text())
    cov = report["modes"]["cov"]
    assert [r["task"] for r in cov] == ["trec", "sms_spam", "rotten_tomatoes"]
    for row in cov:  # OSRM's A sees less of the other tasks than a random A does
        assert row["other"] < row["other_random"]
    stats, meta = load_stats(run / "stats" / "trec.safetensors")
    assert meta.n_examples == 24 and meta.max_length == 32 and len(stats) == 12
    first = (run / "stats" / "trec.safetensors").stat().st_mtime_ns
    caplog.set_level("INFO")
    assert main(["demo", "--run-dir", str(run), *SMALL]) == 0
    assert (run / "stats" / "trec.safetensors").stat().st_mtime_ns == first
    assert "reusing" in caplog.text
    assert main(["demo", "--run-dir", str(run), *SMALL[:2], "stats.max_length=24"]) == 0
    assert (run / "stats" / "trec.safetensors").stat().st_mtime_ns != first  # stale: recomputed


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "osrm.cli", "demo", "--run-dir", str(tmp_path), "lora.rnak=3"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown key 'lora.rnak'" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--help"])
    assert info.value.code == 0 and "examples:" in capsys.readouterr().out
