"""One osrm process per run directory and per merge output; failed writes keep what was there.

Real processes: the CLI runs in a subprocess while this process holds the lock (or two CLI
processes race), and a write past ``RLIMIT_FSIZE`` fails inside safetensors.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from osrm import locking
from osrm.cli import main
from osrm.report import Result, append_results, read_results
from osrm.rundir import LOCK_FILE
from tiny_workspace import leftovers, make_workspace, tree

TASKS = ("low", "high", "reg")
OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
ENV = {**os.environ, **dict.fromkeys(OFFLINE, "1"), "OMP_NUM_THREADS": "1",
       "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip


def osrm(*argv: str, limit: int | None = None, wait: bool = True):
    """The CLI in its own process; ``limit``: a file-size limit (bytes) for its writes."""

    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.Popen(
        [sys.executable, "-m", "osrm", "-q", *argv], env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=set_limit if limit else None,
    )  # fmt: skip
    if not wait:
        return proc
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def one_line(code: int, err: str, warnings: bool = False) -> str:
    """The one error line (``warnings``: logged warnings before it are expected)."""
    lines = [ln for ln in err.splitlines() if not (warnings and " WARNING " in ln)]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("osrm: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny trained run (statistics and `osrm` adapters) and one merged LoRA output."""
    ws = tmp_path_factory.mktemp("locking")
    config = make_workspace(ws, inits=("osrm",))
    assert main(["-q", "train", str(config)]) == 0
    assert main(["-q", "merge", *adapters(ws), "--method", "task_arithmetic", "--format", "lora",
                 "--out", str(ws / "merged")]) == 0  # fmt: skip
    return ws


def adapters(ws: Path) -> list[str]:
    return [str(ws / "run" / "adapters" / "osrm" / t) for t in TASKS]


def test_run_dir_held_by_another_process_is_refused(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    config = tmp_path / "c.yaml"
    config.write_text((trained / "tiny.yaml").read_text().replace(str(trained / "run"), str(run)))
    before = tree(run)
    assert locking.acquire(run / LOCK_FILE, "test")  # held by this (another) process
    try:
        code, _, err = osrm("train", str(config))
    finally:
        locking.release(run / LOCK_FILE)
    line = one_line(code, err)
    assert f"run_dir {run}: another osrm process (pid {os.getpid()}) is writing there" in line
    assert tree(run) == before
    code, out, err = osrm("train", str(config))  # the lock is gone: the command works
    assert code == 0, err
    assert not (run / LOCK_FILE).exists(), "the lock file is removed afterwards"


def test_merge_out_held_by_another_process_is_refused(trained, tmp_path):
    out = tmp_path / "sub" / "out"
    lock = locking.beside(out)
    assert lock == tmp_path / ".sub%out.osrm-lock"  # nothing created before the checks
    args = ["merge", *adapters(trained), "--method", "ties", "--out", str(out)]
    assert locking.acquire(lock, "test")
    try:
        code, _, err = osrm(*args)
    finally:
        locking.release(lock)
    assert f"--out {out}: another osrm process" in one_line(code, err)
    assert not out.exists() and not (tmp_path / "sub").exists()
    code, _, err = osrm(*args)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"], "the lock file stays behind"


def test_two_merges_to_one_new_out(trained, tmp_path):
    """Two real processes race for one --out without --force: one writes, the other refuses."""
    out = tmp_path / "out"
    args = ["merge", *adapters(trained), "--method", "ties", "--format", "lora", "--out", str(out)]
    procs = [osrm(*args, wait=False) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close(), p.stderr.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    err = next(e for c, e in results if c == 2)
    line = one_line(2, err)
    assert "another osrm process" in line or "already exists" in line, line
    assert (out / "osrm_manifest.json").is_file() and not leftovers(tmp_path)


def test_two_runs_on_one_run_dir_never_duplicate_results(trained, tmp_path):
    """Two `osrm eval` on one run directory: results.jsonl has each (key, task) once."""
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    config = tmp_path / "c.yaml"
    text = (trained / "tiny.yaml").read_text().replace(str(trained / "run"), str(run))
    config.write_text(text)
    one = "merge.methods={task_arithmetic: {scale: 0.5}}"  # the merge section may change
    procs = [osrm("eval", str(config), one, wait=False) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close(), p.stderr.close()
    assert 0 in [c for c, _ in results], results
    for code, err in results:
        if code != 0:
            assert "another osrm process" in one_line(code, err)
    keys = [(r.key, r.task) for r in read_results(run / "results.jsonl")]
    assert keys and len(keys) == len(set(keys))


def test_append_results_is_idempotent(tmp_path):
    path = tmp_path / "results.jsonl"
    a = Result(init="osrm", kind="base", task="low", metric="accuracy", score=0.5)
    b = Result(init="osrm", kind="base", task="high", metric="accuracy", score=0.7)
    append_results(path, [a])
    append_results(path, [a, b, b])
    assert [r.task for r in read_results(path)] == ["low", "high"]
    assert len(path.read_text().splitlines()) == 2


@pytest.mark.parametrize(
    "line,names",
    [
        ('{"init": 1, "kind": "base", "task": "t", "metric": "m", "score": 0.5}', "init"),
        ('{"init": "o", "kind": "best", "task": "t", "metric": "m", "score": 0.5}', "kind"),
        ('{"init": "o", "kind": "base", "task": "t", "metric": "m", "score": "x"}', "score"),
        ('{"init": "o", "kind": "base", "task": "t", "metric": "m"}', "score"),
        ("[1, 2]", "expected an object"),
    ],
)
def test_results_line_of_wrong_shape(tmp_path, line, names):
    from osrm.errors import OsrmError

    path = tmp_path / "results.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(OsrmError, match=r"results.jsonl:1: not a result line") as e:
        read_results(path)
    assert names in str(e.value)


# --------------------------------------------------------- writes past the file-size limit


def test_file_size_limit_on_merge_keeps_the_earlier_output(trained, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained / "merged", out)
    before = tree(out)
    args = ["merge", *adapters(trained), "--method", "ties", "--format", "lora", "--force"]
    code, _, err = osrm(*args, "--out", str(out), limit=2048)
    line = one_line(code, err)
    assert f"cannot write {out}" in line and "File too large" in line, line
    assert tree(out) == before and not leftovers(tmp_path)


def test_file_size_limit_on_stats_keeps_the_earlier_file(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    (run / "stats" / "osrm_manifest.json").unlink()  # untrusted: collected again
    config = tmp_path / "c.yaml"
    config.write_text((trained / "tiny.yaml").read_text().replace(str(trained / "run"), str(run)))
    before = tree(run / "stats")
    code, _, err = osrm("stats", str(config), limit=16384)
    line = one_line(code, err, warnings=True)  # "stats/osrm_manifest.json is missing"
    assert "stats/low.safetensors: File too large" in line, line
    assert tree(run / "stats") == before and not leftovers(tmp_path)


def test_out_that_appears_meanwhile_is_not_replaced(trained, tmp_path, capsys, monkeypatch):
    """Another program creates --out while osrm merges into it (no --force): it is kept."""
    import osrm.merging.outputs as outputs

    out = tmp_path / "out"
    real = outputs.write_manifest

    def meanwhile(directory, manifest):
        out.mkdir(exist_ok=True)
        (out / "theirs.txt").write_text("not osrm's\n")
        return real(directory, manifest)

    monkeypatch.setattr(outputs, "write_manifest", meanwhile)
    args = ["merge", *adapters(trained), "--method", "ties", "--format", "lora", "--out", str(out)]
    capsys.readouterr()
    assert main(args) == 2
    assert f"{out} appeared while osrm was writing it" in one_line(2, capsys.readouterr().err)
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"] and not leftovers(tmp_path)
