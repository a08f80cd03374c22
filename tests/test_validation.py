"""Validation before the first write, and where osrm writes: one mechanism per class of input.

- Values: task blocks, seed, device and numeric CLI flags are validated when the config or the
  command line is read (exit 2, one line naming the field; nothing written).
- Checks before writing: device, target modules, rank and the splits the run uses are checked
  before ``config.yaml`` exists, so the corrected command is not refused afterwards.
- Containment: a symbolic link anywhere in a run directory is refused before anything is written.
- ``-q`` switches off every progress bar.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from osrm.cli import main
from osrm.errors import OsrmError
from osrm.loaders import read_json, read_jsonl, read_yaml
from osrm.rundir import run_path
from tiny_workspace import make_workspace, tree


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """Model, data and config of the tiny tasks (nothing run yet)."""
    root = tmp_path_factory.mktemp("validation")
    make_workspace(root, inits=("osrm",))
    return root


def config_with(ws: Path, tmp_path: Path, task: dict | None = None, **top) -> Path:
    """The workspace config with run_dir under ``tmp_path``; task 0 updated, top keys set."""
    data = yaml.safe_load((ws / "tiny.yaml").read_text())
    data["run_dir"] = str(tmp_path / "run")
    if task:
        data["tasks"][0].update(task)
    data.update(top)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def one_error(capsys, argv: list[str]) -> str:
    """Run the CLI; it must exit 2 with exactly one stderr line; return that line."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("osrm: error: "), err
    return lines[0]


# ------------------------------------------------------------------- A: values, at load time

TASK_FIELDS = [
    ({"text_fields": 5}, "'tasks.0.text_fields'"),
    ({"files": {"train": 5}}, "'tasks.0.files.train'"),
    ({"files": {"dev": "a.csv"}}, "'tasks.0.files.dev'"),
    ({"files": ["a.csv"]}, "'tasks.0.files'"),
    ({"splits": {"test_fraction": "abc"}}, "'tasks.0.splits.test_fraction'"),
    ({"splits": {"test_fraction": float("nan")}}, "'tasks.0.splits.test_fraction'"),
    ({"splits": 3}, "'tasks.0.splits'"),
    ({"label_names": [[1], 2]}, "'tasks.0.label_names.0'"),
    ({"label_names": "01"}, "'tasks.0.label_names'"),
    ({"label_field": None}, "'tasks.0.label_field'"),
    ({"metrics": {"a": 1}}, "'tasks.0.metrics'"),
    ({"regression": "maybe"}, "'tasks.0.regression'"),
    ({"size": -3}, "'tasks.0.size'"),
    ({"name": 7}, "'tasks.0.name'"),
    ({"typo": 1}, "unknown key 'tasks.0.typo'"),
]


@pytest.mark.parametrize("task,names", TASK_FIELDS, ids=[n for _, n in TASK_FIELDS])
def test_task_block_types_are_one_line(ws, tmp_path, capsys, task, names):
    line = one_error(capsys, ["stats", str(config_with(ws, tmp_path, task))])
    assert names in line and "c.yaml" in line
    assert not (tmp_path / "run").exists()


TOP_VALUES = [
    ("seed", 2**70, "'seed'"),
    ("seed", -1, "'seed'"),
    ("tasks", [5, "trec"], "'tasks.0'"),
    ("model", {"device": "bogus"}, "'model.device'"),
    ("model", {"device": 3}, "'model.device'"),
    ("stats", {"batch_size": 10**23}, "'stats.batch_size': expected an integer of at most 64"),
    ("train", {"steps": -(2**64)}, "'train.steps'"),
    ("lora", {"alpha": float("inf")}, "'lora.alpha': Input should be a finite number"),
    ("merge", {"weights": [1.0, float("nan"), 1.0]}, "'merge.weights.1'"),
    ("train", {"epochs": 1e300}, "'train.epochs'"),
]


@pytest.mark.parametrize("key,value,names", TOP_VALUES, ids=[n for _, _, n in TOP_VALUES])
def test_top_level_values_are_one_line(ws, tmp_path, capsys, key, value, names):
    line = one_error(capsys, ["stats", str(config_with(ws, tmp_path, **{key: value}))])
    assert names in line
    assert not (tmp_path / "run").exists()


FLAGS = [
    ["eval", "--adapter", "x", "--task", "trec", "--batch-size", "0"],
    ["eval", "--adapter", "x", "--task", "trec", "--batch-size", "-1"],
    ["eval", "--adapter", "x", "--task", "trec", "--max-length", "0"],
    ["eval", "--adapter", "x", "--task", "trec", "--max-examples", "0"],
    ["eval", "--adapter", "x", "--task", "trec", "--seed", str(2**70)],
    ["eval", "--adapter", "x", "--task", "trec", "--batch-size", "two"],
    ["merge", "a", "b", "--method", "ties", "--out", "o", "--rank", "0"],
    ["merge", "a", "b", "--method", "ties", "--out", "o", "--density", "nan"],
    ["merge", "a", "b", "--method", "ties", "--out", "o", "--scale", "inf"],
    ["merge", "a", "b", "--method", "ties", "--out", "o", "--weights", "1", "nan"],
    ["merge", "a", "b", "--method", "ties", "--out", "o", "--seed", "-1"],
]


@pytest.mark.parametrize("argv", FLAGS, ids=[" ".join(a[-2:]) for a in FLAGS])
def test_numeric_flags_are_usage_errors(tmp_path, capsys, argv):
    os.chdir(tmp_path)  # nothing may appear in the working directory
    line = one_error(capsys, argv)
    assert f"argument {argv[-2] if argv[-2] != '1' else '--weights'}:" in line
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------- the checked loaders (our artifacts)


@pytest.mark.parametrize(
    "reader,text,names",
    [
        (read_json, "{not json", "x.data:1: thing is not valid JSON"),
        (read_json, "[1, 2]", "should hold a JSON object"),
        (read_yaml, "a: [1,\n", "x.data:2: thing is not valid YAML"),
        (read_yaml, "- 1\n", "should hold a JSON object"),
        (read_json, b"\xff\xfe", "not UTF-8"),
    ],
)
def test_checked_loaders_name_file_and_line(tmp_path, reader, text, names):
    path = tmp_path / "x.data"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(OsrmError, match="x.data") as e:
        reader(path, "thing")
    assert names in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(OsrmError, match="cannot read thing"):
        reader(tmp_path / "missing", "thing")


def test_read_jsonl_lines(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n{"b": 2}\n{"c"')  # an interrupted last append
    assert read_jsonl(path, "result") == [(1, {"a": 1}), (3, {"b": 2})]
    assert "incomplete last line" in caplog.text
    path.write_text('{"a": 1}\n[1]\n')
    with pytest.raises(OsrmError, match=r"r.jsonl:2: not a result line"):
        read_jsonl(path, "result")


@pytest.mark.parametrize(
    "name,text,names",
    [
        ("config.yaml", "seed: [1,\n", "config.yaml:2: the run's recorded config is not valid"),
        ("config.yaml", "- a\n", "config.yaml: the run's recorded config should hold"),
    ],
)
def test_corrupt_recorded_config(ws, tmp_path, capsys, name, text, names):
    config = config_with(ws, tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / name).write_text(text)
    before = tree(tmp_path / "run")
    assert names in one_error(capsys, ["stats", str(config)])
    assert tree(tmp_path / "run") == before


# ------------------------------------------------------ B: everything checked before writing

CUDA = torch.cuda.is_available()
BEFORE_WRITE = [
    pytest.param(
        ["model.device=cuda"], "no CUDA device", marks=pytest.mark.skipif(CUDA, reason="")
    ),
    pytest.param(["model.device=cuda:7"], "model.device 'cuda:7'", id="cuda-index"),
    pytest.param(["lora.target_modules=[nosuch]"], "lora.target_modules", id="target-modules"),
    pytest.param(["lora.rank=33"], "lora.rank 33 exceeds the input dimension 32", id="rank"),
    pytest.param(  # found by the CLI fuzz test: the pooler sees one vector per sequence
        ["lora.target_modules=[dense]"],
        "bert.pooler.dense sees one input per sequence",
        id="per-sequence-module",
    ),
]


@pytest.mark.parametrize("overrides,names", BEFORE_WRITE)
def test_checked_before_writing_then_corrected_command_succeeds(
    ws, tmp_path, capsys, overrides, names
):
    config = config_with(ws, tmp_path)
    assert names in one_error(capsys, ["-q", "stats", str(config), *overrides])
    assert not (tmp_path / "run").exists(), "the run directory was created"
    assert main(["-q", "stats", str(config)]) == 0  # not refused as "a different section"
    assert (tmp_path / "run" / "stats" / "low.safetensors").is_file()


EMPTY = [
    ({"splits": {"test_fraction": 0.0}}, [], "has no test examples"),
    ({"splits": {"validation_fraction": 0.0}}, ["eval.split=validation"], "no validation examples"),
]


@pytest.mark.parametrize("task,extra,names", EMPTY, ids=["test", "validation"])
def test_empty_evaluation_split_is_found_before_training(ws, tmp_path, capsys, task, extra, names):
    config = config_with(ws, tmp_path, task)
    line = one_error(capsys, ["-q", "train", str(config), *extra])
    assert names in line and "'low'" in line, line
    assert not (tmp_path / "run").exists()


# --------------------------------------------------- D: writes stay inside the run directory

LINKED = [
    "stats",
    "adapters",
    "adapters/osrm",
    "merged",
    "results.jsonl",
    "adapters/osrm/.low.ckpt",
]


@pytest.mark.parametrize("sub", LINKED)
def test_symlink_inside_run_dir_is_refused(ws, tmp_path, capsys, sub):
    from osrm.config import dump_config, load_config

    config = config_with(ws, tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(load_config(config)))
    outside = tmp_path / "outside"
    outside.mkdir()
    link = run / sub
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside / "target" if "." in link.name else outside, target_is_directory=True)
    before = tree(run)
    line = one_error(capsys, ["-q", "run", str(config)])
    assert f"{link} is a symbolic link" in line
    assert list(outside.iterdir()) == [] and tree(run) == before


@pytest.mark.parametrize("parts", [("stats", "low.safetensors"), ("adapters", "osrm", "low")])
def test_run_path_refuses_links_made_later(tmp_path, parts):
    run = tmp_path / "run"
    run.mkdir()
    assert run_path(run, *parts) == run.joinpath(*parts)
    (tmp_path / "elsewhere").mkdir()
    (run / parts[0]).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OsrmError, match="is a symbolic link"):
        run_path(run, *parts)
    with pytest.raises(OsrmError, match="outside the run directory"):
        run_path(run, "..", "x")


# ------------------------------------------------------------------ E: -q, no progress bars

BAR_MARKS = ("it/s", "batch/s", "step/s", "s/batch", "s/step", "%|")


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_shows_no_progress_bar(ws, tmp_path, capsys, quiet):
    config = config_with(ws, tmp_path)
    capsys.readouterr()
    assert main([*(["-q"] if quiet else []), "train", str(config), "train.steps=2"]) == 0
    captured = capsys.readouterr()
    bars = [m for m in BAR_MARKS if m in captured.err or m in captured.out]
    assert bool(bars) != quiet, (quiet, captured.err[-500:])


# ------------------------------------------- inputs longer than the model's position table


def test_max_positions_of_bert_and_roberta():
    from conftest import make_tiny_bert, make_tiny_roberta
    from osrm.models import max_positions

    assert max_positions(make_tiny_bert().config) == 64
    assert max_positions(make_tiny_roberta().config) == 79  # position ids start after padding


def test_max_length_above_the_model_positions_is_cut(ws):
    """`max_length` 500 on a 64-position model: inputs are cut at 64, not an IndexError."""
    from datasets import ClassLabel, Dataset, Features, Value

    from conftest import make_tiny_bert, make_tiny_tokenizer
    from osrm.evaluate import evaluate
    from osrm.tasks.registry import task_from_dict

    spec = task_from_dict({"name": "long", "files": {"train": str(ws / "data" / "low.csv")},
                           "text_fields": ["text"], "label_field": "label",
                           "label_names": ["0", "1"]})  # fmt: skip
    features = Features({"text": Value("string"), "label": ClassLabel(names=["0", "1"])})
    data = Dataset.from_dict({"text": ["w4 " * 300, "w5 w6"], "label": [0, 1]}, features=features)
    model, tokenizer = make_tiny_bert(num_labels=2), make_tiny_tokenizer()
    scores = evaluate(model, spec, tokenizer=tokenizer, max_length=500, data=data)
    assert 0 <= scores["accuracy"] <= 1
