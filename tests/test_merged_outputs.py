"""`osrm merge` outputs on a tiny trained workspace: evaluable for every task, reproducible.

Three adapters of tasks with different label counts (``low`` 2 classes, ``high`` 3, ``reg``
regression) are merged through the real CLI, then scored three ways that must agree: the
pipeline's in-memory merge (``merged_into`` + ``use_head``), ``osrm eval --merged``, and plain
transformers (+ peft for LoRA outputs) with :func:`osrm.merging.load_head`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForSequenceClassification

import osrm.adapter_commands
from conftest import synthetic_batches
from osrm.artifacts import write_safetensors
from osrm.cli import main
from osrm.config import load_config
from osrm.heads import adapter_head, head_outputs, use_head
from osrm.merging import load_adapters, load_head, merge_deltas, read_manifest
from osrm.models import load_base
from osrm.stages.evaluation import eval_task, merged_into
from osrm.tasks.registry import task_spec
from tiny_workspace import make_workspace, tree

TASKS = ("low", "high", "reg")
OUTPUTS = {"low": 2, "high": 3, "reg": 1}
BATCHES = synthetic_batches(5, 12, 6, lo=4)  # word ids w4..w63: both tasks' vocabularies


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("merged")
    config = make_workspace(root, inits=("osrm",))
    assert main(["-q", "train", str(config)]) == 0
    return root


def adapters(ws: Path) -> list[str]:
    return [str(ws / "run" / "adapters" / "osrm" / t) for t in TASKS]


def cfg_of(ws: Path):
    return load_config(ws / "tiny.yaml")


def merge_cli(ws: Path, out: Path, *extra: str) -> Path:
    assert main(["-q", "merge", *adapters(ws), *extra, "--out", str(out)]) == 0
    return out


def logits(model, batches=BATCHES) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**b).logits for b in batches])


def eval_cli(ws: Path, merged: Path, task: str, monkeypatch, capsys) -> dict:
    """``osrm eval --merged`` with the workspace's settings (its tasks are user task blocks)."""
    cfg = cfg_of(ws)
    monkeypatch.setattr(osrm.adapter_commands, "get_task", lambda name: task_spec(cfg, name))
    capsys.readouterr()
    args = ["-q", "eval", "--merged", str(merged), "--task", task, "--split", cfg.eval.split,
            "--max-length", str(cfg.train.max_length), "--batch-size", str(cfg.eval.batch_size),
            "--max-examples", str(cfg.eval.max_eval_examples), "--seed", str(cfg.seed)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    return {k: v for k, v in out.items() if k not in ("task", "split")}


# method, CLI flags, hyperparameters of the same merge in memory
SETTINGS = {
    "dense-ties": ("dense", "ties", ["--density", "0.5"], {"density": 0.5}),
    "dense-dare_ties": ("dense", "dare_ties", ["--density", "0.5", "--seed", "3"],
                        {"density": 0.5, "seed": 3}),
    "lora-task_arithmetic": ("lora", "task_arithmetic", ["--scale", "0.7"], {"scale": 0.7}),
}  # fmt: skip


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_every_task_scores_like_the_in_memory_merge(setting, ws, tmp_path, monkeypatch, capsys):
    fmt, method, flags, hp = SETTINGS[setting]
    # dense: the very weights the pipeline builds. LoRA: W + B_cat A_cat (rank Σ r_i) differs
    # from W + Σ ΔW_i by float32 rounding (~1e-7), which the Pearson correlation of an 8-step
    # regression head's nearly constant predictions amplifies to ~1e-5
    tol = 1e-9 if fmt == "dense" else 1e-4
    out = merge_cli(ws, tmp_path / "out", "--method", method, *flags, "--format", fmt)
    manifest = read_manifest(out)
    cfg = cfg_of(ws)
    backbone, tok = load_base(cfg)
    dirs = adapters(ws)
    merged = merge_deltas(load_adapters(dirs), method, None, **hp)
    heads = {t: adapter_head(d) for t, d in zip(TASKS, dirs, strict=True)}
    if fmt == "dense":  # the folder's own head: the first task's trained one, never random
        assert manifest["model_head"] == "low"
        saved = load_file(str(out / "model.safetensors"))
        for name, value in heads["low"].items():
            assert torch.equal(saved[name], value), name
        config = AutoConfig.from_pretrained(out)
        assert config.num_labels == 2 and config.problem_type == "single_label_classification"
    for task in TASKS:
        with merged_into(backbone, merged), use_head(backbone, heads[task]) as model:
            expected_scores = eval_task(cfg, model, tok, task_spec(cfg, task))
            expected_logits = logits(model)
        assert backbone.config.num_labels == 2  # use_head restored the backbone's config
        # the same folder through plain transformers (+ peft) and load_head
        if fmt == "dense":
            plain = AutoModelForSequenceClassification.from_pretrained(out)
        else:
            base = AutoModelForSequenceClassification.from_pretrained(ws / "tiny-bert")
            plain = PeftModel.from_pretrained(base, str(out))
        load_head(plain.eval(), out, task)
        torch.testing.assert_close(logits(plain), expected_logits, rtol=1e-5, atol=1e-5)
        inner = plain.get_base_model() if hasattr(plain, "get_base_model") else plain
        assert inner.config.num_labels == OUTPUTS[task] == inner.num_labels
        kind = "regression" if task == "reg" else "single_label_classification"
        assert inner.config.problem_type == kind
        # and through the command line
        scores = eval_cli(ws, out, task, monkeypatch, capsys)
        assert scores.keys() == expected_scores.keys()
        for key, value in expected_scores.items():
            assert scores[key] == pytest.approx(value, rel=1e-6, abs=tol), (task, key)


@pytest.mark.parametrize("fmt", ["dense", "lora"])
def test_identical_merges_give_identical_bytes(fmt, ws, tmp_path):
    flags = ["--method", "dare_ties", "--density", "0.5", "--format", fmt]
    one = tree(merge_cli(ws, tmp_path / "one", *flags))
    two = tree(merge_cli(ws, tmp_path / "two", *flags))
    assert len(one) >= 6 and one == two  # every file, byte for byte
    assert any(p.endswith(".safetensors") for p in one)


def test_regmean_statistics_are_matched_by_task_not_position(ws, tmp_path):
    stats = [str(ws / "run" / "stats" / f"{t}.safetensors") for t in TASKS]
    flags = ["--method", "regmean", "--hp", "alpha=0.5"]
    ordered = merge_cli(ws, tmp_path / "ordered", *flags, "--stats", *stats)
    shuffled = merge_cli(ws, tmp_path / "shuffled", *flags, "--stats", *stats[::-1])
    a, b = tree(ordered), tree(shuffled)
    weights = [p for p in a if p.endswith(".safetensors")]
    assert "model.safetensors" in weights and all(a[p] == b[p] for p in weights)
    # the raw-sum Grams of the paper are another merge (task sizes differ in tokens)
    summed = merge_cli(ws, tmp_path / "summed", *flags, "gram=sum", "--stats", *stats)
    assert tree(summed)["model.safetensors"] != a["model.safetensors"]
    assert read_manifest(summed)["hyperparameters"]["gram"] == "sum"


def test_artifacts_are_shared_files(ws, tmp_path):
    """safetensors writes 0600; every artifact gets 0666 & ~umask like the JSON beside it."""
    mask = os.umask(0)
    os.umask(mask)
    expected = 0o666 & ~mask
    folders = [
        merge_cli(ws, tmp_path / "dense", "--method", "ties"),
        merge_cli(ws, tmp_path / "lora", "--method", "task_arithmetic", "--format", "lora"),
        Path(adapters(ws)[0]),
        ws / "run" / "stats",
    ]
    single = tmp_path / "single" / "checkpoint.safetensors"  # e.g. training checkpoints
    write_safetensors(single, {"x": torch.zeros(2)}, {"format": "test"})
    folders.append(single.parent)
    for folder in folders:
        files = [p for p in folder.rglob("*") if p.is_file()]
        assert any(p.suffix == ".safetensors" for p in files), folder
        modes = {str(p.relative_to(folder)): oct(p.stat().st_mode & 0o777) for p in files}
        assert set(modes.values()) == {oct(expected)}, modes


def test_lora_output_carries_its_head_for_vanilla_peft(ws, tmp_path):
    out = merge_cli(ws, tmp_path / "lora", "--method", "task_arithmetic", "--format", "lora")
    manifest = read_manifest(out)
    assert manifest["adapter_head"] == "low" and sorted(manifest["heads"]) == sorted(TASKS)
    for task in TASKS:
        head = load_file(str(out / manifest["heads"][task]))
        assert head_outputs(head) == OUTPUTS[task]


def test_peft_warnings_do_not_precede_the_error_line(ws, tmp_path):
    """A separate process: Python shows each warning once per process, so only a fresh one
    proves that nothing but the error line reaches stderr."""
    bad = tmp_path / "adapter"
    bad.mkdir()
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        (bad / f).write_bytes((Path(adapters(ws)[0]) / f).read_bytes())
    # a lora_A of another input size: transformers warns (FutureWarning) while peft loads it
    weights = load_file(str(bad / "adapter_model.safetensors"))
    key = next(k for k in sorted(weights) if "lora_A" in k)
    weights[key] = weights[key][:, :16].contiguous()
    save_file(weights, str(bad / "adapter_model.safetensors"), metadata={"format": "pt"})
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    run = subprocess.run(
        [sys.executable, "-m", "osrm", "eval", "--adapter", str(bad), "--task", "sms_spam"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    lines = run.stderr.splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert lines[0].startswith("osrm: error: ") and "peft cannot load" in lines[0]


def test_pipeline_merge_save_is_the_scored_model(ws, monkeypatch, capsys):
    """``merge.save: true``: the saved folder is written like `osrm merge` (first task's real
    head), and scoring it gives the very scores the run recorded for that merge."""
    assert main(["-q", "eval", str(ws / "tiny.yaml")]) == 0
    results = [json.loads(line) for line in (ws / "run" / "results.jsonl").read_text().splitlines()]
    merged = [r for r in results if r["kind"] == "merged" and r["method"] == "task_arithmetic"]
    assert sorted(r["task"] for r in merged) == sorted(TASKS)
    (folder,) = (ws / "run" / "merged" / "osrm" / "task_arithmetic").iterdir()
    assert read_manifest(folder)["model_head"] == "low"
    head = adapter_head(adapters(ws)[0])
    saved = load_file(str(folder / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in head.items())
    for record in merged:
        scores = eval_cli(ws, folder, record["task"], monkeypatch, capsys)
        assert scores[record["metric"]] == pytest.approx(record["score"], rel=1e-6, abs=1e-9)


def test_ties_normalize_flag_is_the_hyperparameter(ws, tmp_path):
    flags = ["--method", "ties", "--density", "0.5", "--weights", "1", "2", "0.5"]
    flag = tree(merge_cli(ws, tmp_path / "flag", *flags, "--normalize"))
    hp = merge_cli(ws, tmp_path / "hp", *flags, "--hp", "normalize=true")
    plain = tree(merge_cli(ws, tmp_path / "plain", *flags))
    assert flag == tree(hp) and read_manifest(hp)["hyperparameters"]["normalize"] is True
    assert flag["model.safetensors"] != plain["model.safetensors"]


def test_trained_adapters_record_per_module_base_fingerprints(ws):
    from dataclasses import replace

    from osrm.adapters import load_provenance
    from osrm.stats import find_target_modules, module_fingerprints

    base, _ = load_base(cfg_of(ws))
    expected = module_fingerprints(base, find_target_modules(base, ["query", "value"]))
    assert len(expected) == 4 and len(set(expected.values())) == 4
    for path in adapters(ws):
        prov = load_provenance(path)
        assert prov.base_fingerprints == expected
        # not part of the run fingerprint: adapters of older runs are not retrained for it
        assert str(replace(prov, base_fingerprints={})) == str(prov)


# Every JSON file osrm reads beside weights goes through one checked loader (osrm.loaders):
# a corrupt one is one line naming the file, whichever command reads it.
CORRUPT_FILES = [
    ("adapter", "osrm_provenance.json", "osrm_provenance.json:1: osrm provenance is not valid"),
    ("adapter", "adapter_config.json", "adapter_config.json:1: adapter config is not valid JSON"),
    ("merged", "osrm_merge.json", "osrm_merge.json:1: the merge manifest is not valid JSON"),
]


@pytest.mark.parametrize("where,name,names", CORRUPT_FILES, ids=[n for _, n, _ in CORRUPT_FILES])
def test_corrupt_json_beside_weights_is_one_line(
    ws, tmp_path, capsys, monkeypatch, where, name, names
):
    cfg = cfg_of(ws)
    monkeypatch.setattr(osrm.adapter_commands, "get_task", lambda task: task_spec(cfg, task))
    if where == "adapter":  # a copy without osrm's sha256 manifest, as if from elsewhere
        target = tmp_path / "adapter"
        shutil.copytree(adapters(ws)[0], target)
        (target / "osrm_manifest.json").unlink()
        argv = ["merge", str(target), *adapters(ws)[1:], "--method", "ties"]
        argv += ["--out", str(tmp_path / "out")]
    else:
        target = merge_cli(ws, tmp_path / "merged", "--method", "ties")
        (target / "osrm_manifest.json").unlink()
        argv = ["eval", "--merged", str(target), "--task", "low"]
    (target / name).write_text('{"task": ')
    capsys.readouterr()
    assert main(["-q", *argv]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and names in lines[0], lines
    assert not (tmp_path / "out").exists()
