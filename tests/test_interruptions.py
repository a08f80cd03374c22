"""Interruptions, determinism and tampering on a whole tiny `osrm run`.

Four runs are killed with SIGKILL (tests/interrupt_driver.py) inside statistics collection,
training, evaluation and merging; each is re-run with the same command and must end equal to an
uninterrupted run: the same result tables, byte for byte, and the same artifacts. A second clean
run in another process checks that the same config and seed give byte-identical files on the CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from osrm.artifacts import verify_dir, verify_file
from osrm.cli import main
from osrm.stats import load_stats
from tiny_workspace import leftovers, make_workspace

DRIVER = Path(__file__).with_name("interrupt_driver.py")
# kill point -> which call of it dies (see interrupt_driver.py)
KILLS = {  # two tasks (low, high), two inits (lora, osrm)
    "stats": 2,  # writing stats/high.safetensors, half written
    "train": 3,  # adapter osrm/low at step 4 of 8, right after its checkpoint
    "result": 6,  # the 2nd merged result line of init lora, half written
    "merged": 2,  # merged/lora/dare_ties, weights written, manifest not yet
}
RESULTS = ("results.jsonl", "results.csv")


def artifacts(run: Path) -> dict[str, bytes]:
    """What later stages and users consume, which must not depend on interruptions."""
    patterns = [
        "stats/*.safetensors",
        "adapters/*/*/adapter_model.safetensors",
        "adapters/*/*/adapter_config.json",
        "adapters/*/*/osrm_provenance.json",
        "merged/*/*/*/model.safetensors",
        "merged/*/*/*/heads/*.safetensors",
        "merged/*/*/*/config.json",
        *RESULTS,
        "interference.json",
        "subspace_report.json",
    ]
    found = (p.relative_to(run) for g in patterns for p in run.glob(g))
    return {
        p.as_posix(): (run / p).read_bytes()
        for p in found
        if not any(part.startswith(".") for part in p.parts)  # a killed write's temporary files
    }


def flip_lowest_bit(path: Path) -> None:
    """Change the 6th number of the first ``xtx`` tensor by one unit in the last place."""
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    start = min(v["data_offsets"][0] for k, v in header.items() if k.endswith(".xtx"))
    data[8 + size + start + 8 * 5] ^= 0x01  # little-endian float64: the mantissa's last bit
    path.write_bytes(bytes(data))


def visible(run: Path) -> set[str]:
    """Every file that is not hidden (temporary files of a killed write are hidden)."""
    return {
        p.relative_to(run).as_posix()
        for p in run.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(run).parts)
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Start the killed runs and a clean run in other processes; the reference runs here."""
    root = tmp_path_factory.mktemp("interrupt")
    config = make_workspace(root, n_tasks=2)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = {}
    for point, n in KILLS.items():
        argv = [sys.executable, str(DRIVER), point, str(n)]
        procs[point] = (argv, root / point)
    procs["clean"] = ([sys.executable, str(DRIVER), "none", "0"], root / "clean")
    started = {}
    for name, (argv, run) in procs.items():
        log = open(root / f"{name}.log", "w")  # noqa: SIM115 - closed below
        started[name] = (
            subprocess.Popen(
                [*argv, "-q", "run", str(config), f"run_dir={run}"], stdout=log, stderr=log, env=env
            ),  # fmt: skip
            log,
        )
    assert main(["-q", "run", str(config), f"run_dir={root / 'reference'}"]) == 0
    codes = {}
    for name, (proc, log) in started.items():
        codes[name] = proc.wait(timeout=600)
        log.close()
    return {"root": root, "config": config, "codes": codes}


def test_killed_runs_died_where_intended(runs):
    root, codes = runs["root"], runs["codes"]
    assert codes["clean"] == 0, (root / "clean.log").read_text()[-2000:]
    for point in KILLS:
        assert codes[point] == -signal.SIGKILL, (point, (root / f"{point}.log").read_text()[-2000:])
    # what each kill left: half-written temporary files, never the artifact itself
    stats = root / "stats" / "stats"
    assert not (stats / "high.safetensors").exists()
    assert any(p.name.startswith(".high.safetensors.") for p in stats.iterdir())
    assert not (root / "train" / "adapters" / "osrm" / "low").exists()
    assert (root / "train" / "adapters" / "osrm" / ".low.ckpt").is_dir()
    assert not (root / "result" / "results.jsonl").read_bytes().endswith(b"\n")
    dare = root / "merged" / "merged" / "lora" / "dare_ties"
    assert [p.name.startswith(".") for p in dare.iterdir()] == [True]  # only the temporary dir


@pytest.mark.parametrize("point", sorted(KILLS))
def test_rerun_after_sigkill_equals_an_uninterrupted_run(runs, point, caplog):
    root, config = runs["root"], runs["config"]
    run, reference = root / point, root / "reference"
    caplog.set_level("INFO")
    assert main(["-q", "run", str(config), f"run_dir={run}"]) == 0
    assert visible(run) == visible(reference)
    expected, got = artifacts(reference), artifacts(run)
    assert sorted(got) == sorted(expected)
    assert [k for k in expected if got[k] != expected[k]] == []
    for path in [*run.glob("adapters/*/[!.]*"), *run.glob("merged/*/*/[!.]*")]:
        assert verify_dir(path) is None
    for path in run.glob("stats/*.safetensors"):
        assert verify_file(path) is None
    assert all(name.endswith((".tmp", ".old")) for name in map(str, leftovers(run)))
    if point == "train":  # it resumed from the checkpoint, and the checkpoint is gone
        record = json.loads((run / "adapters" / "osrm" / "low" / "training.json").read_text())
        assert record["resumed_from"] == 4
        assert not (run / "adapters" / "osrm" / ".low.ckpt").exists()
    if point == "result":
        assert "incomplete last line" in caplog.text


def test_same_config_and_seed_give_byte_identical_files(runs):
    """Two processes (different hash seeds), one config: identical statistics, adapters, tables."""
    root = runs["root"]
    a, b = artifacts(root / "reference"), artifacts(root / "clean")
    assert sorted(a) == sorted(b) and len([k for k in a if k.startswith("stats/")]) == 2
    assert [k for k in a if a[k] != b[k]] == []
    # what differs is only what should: wall-clock times and the run directory's own path
    for name in ("adapters/osrm/low/training.json",):
        ra, rb = (json.loads((root / r / name).read_text()) for r in ("reference", "clean"))
        ra.pop("seconds"), rb.pop("seconds")
        assert ra == rb


def test_tampered_artifacts_are_detected_and_redone(runs, tmp_path, caplog):
    root, config = runs["root"], runs["config"]
    run = tmp_path / "run"
    shutil.copytree(root / "reference", run)
    stats = run / "stats" / "low.safetensors"
    flip_lowest_bit(stats)  # still a valid, symmetric, finite file: safetensors cannot tell
    assert load_stats(stats, check_manifest=False)  # safetensors itself cannot tell
    weights = run / "adapters" / "osrm" / "high" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))
    record = run / "adapters" / "lora" / "low" / "training.json"
    record.write_text(record.read_text()[:50])  # truncated
    caplog.set_level("INFO")
    assert main(["-q", "run", str(config), f"run_dir={run}"]) == 0
    text = caplog.text
    assert "low.safetensors does not match the sha256" in text and "recomputing" in text
    assert "osrm/high/adapter_model.safetensors does not match" in text
    assert "lora/low/training.json does not match" in text
    expected, got = artifacts(root / "reference"), artifacts(run)
    assert [k for k in expected if got[k] != expected[k]] == []
