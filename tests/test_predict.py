"""`osrm predict` and `osrm.load_merged` on the quick demo's real adapters: predictions on each
task's test split give back the pipeline's metric (computed here from the output file), for a
dense and a LoRA merge and for a single adapter; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import osrm
from conftest import DEMO_INIT, DEMO_TASKS
from osrm.cli import main
from osrm.metrics import compute_metrics
from osrm.report import read_results
from osrm.tasks.registry import get_task, load_task

COMMON = ["--max-length", "64", "--batch-size", "64"]  # the demo's eval settings (SMALL)


def _inputs(tmp_path, task: str) -> tuple[object, np.ndarray]:
    """The task's test split as the pipeline scores it, written as JSONL: (path, labels)."""
    data = load_task(get_task(task), "test", seed=0, max_examples=24)
    path = tmp_path / f"{task}.jsonl"
    columns = [c for c in ("text", "text_pair") if c in data.column_names]
    path.write_text("".join(json.dumps({c: row[c] for c in columns}) + "\n" for row in data))
    return path, np.asarray(data["label"])


def _metric_from_file(path, task: str, labels: np.ndarray) -> float:
    spec = get_task(task)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(len(labels)))  # input order
    if spec.is_regression:
        preds = np.asarray([r["value"] for r in records])
    else:
        preds = np.asarray([r["label_id"] for r in records])
        assert all(spec.label_names[r["label_id"]] == r["label"] for r in records)
        assert all(0 < r["probability"] <= 1 for r in records)
    return compute_metrics(spec.metrics, preds, labels)[spec.main_metric]


def _score(run, init: str, kind: str, method: str = "", hp: str = "") -> dict[str, float]:
    rows = read_results(run / "results.jsonl")
    return {r.task: r.score for r in rows if (r.init, r.kind, r.method, r.hp) == (init, kind,
            method, hp)}  # fmt: skip


@pytest.fixture(scope="module")
def merged(quick_demo, tmp_path_factory):
    """The demo's OSRM-family adapters merged by `osrm merge`: {format: directory}."""
    run, _ = quick_demo
    adapters = [str(run / "adapters" / DEMO_INIT / t) for t in DEMO_TASKS]
    flags = {"dense": ["--method", "ties", "--density", "0.2"],
             "lora": ["--method", "task_arithmetic", "--scale", "0.5"]}  # fmt: skip
    out = {}
    for fmt, f in flags.items():
        out[fmt] = tmp_path_factory.mktemp("merged") / fmt
        assert main(["-q", "merge", *adapters, *f, "--format", fmt, "--out", str(out[fmt])]) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fmt,setting,tol", [("dense", ("ties", "density=0.2"), 1e-9),
                         ("lora", ("task_arithmetic", "scale=0.5"), 1e-3)])  # fmt: skip
def test_predict_gives_back_the_pipeline_metric_for_every_task(
    quick_demo, merged, tmp_path, fmt, setting, tol
):
    run, _ = quick_demo
    expected = _score(run, DEMO_INIT, "merged", *setting)
    for task in DEMO_TASKS:  # 6 classes, 2 classes, regression
        inputs, labels = _inputs(tmp_path, task)
        out = tmp_path / f"{task}.predictions.jsonl"
        args = ["--task", task, "--input", str(inputs), "--out", str(out), *COMMON]
        assert main(["-q", "predict", str(merged[fmt]), *args]) == 0
        got = _metric_from_file(out, task, labels)
        assert got == pytest.approx(expected[task], abs=tol), task


@pytest.mark.slow
def test_a_single_adapter_predicts_its_individual_score(quick_demo, tmp_path):
    run, _ = quick_demo
    expected = _score(run, "lora", "individual")
    for task in DEMO_TASKS:
        inputs, labels = _inputs(tmp_path, task)
        out = tmp_path / f"{task}.jsonl.out.jsonl"
        adapter = str(run / "adapters" / "lora" / task)
        args = ["--task", task, "--input", str(inputs), "--out", str(out), *COMMON]
        assert main(["-q", "predict", adapter, *args]) == 0
        # the pipeline scores the adapter unmerged (xW + (xA)B), predict folds it into W
        assert _metric_from_file(out, task, labels) == pytest.approx(expected[task], abs=1e-3)


@pytest.mark.slow
def test_python_object_lists_tasks_and_predicts(merged):
    model = osrm.load_merged(merged["dense"])
    assert model.tasks == list(DEMO_TASKS) and model.kind == "dense"
    texts = ["How far is it from Denver to Aspen?", "What is the capital of Peru?"]
    records = model.predict(texts, task="trec")
    assert [r["index"] for r in records] == [0, 1]
    assert all(r["label"] in get_task("trec").label_names for r in records)
    # one text alone gets the same prediction as inside a batch (padding is masked)
    alone = model.predict(texts[1:], task="trec")[0]
    assert alone["label"] == records[1]["label"]
    assert alone["probability"] == pytest.approx(records[1]["probability"], abs=1e-5)
    value = model.predict(["A wonderful, moving film."], task="vader_movies")[0]
    assert set(value) == {"index", "value"} and np.isfinite(value["value"])


BAD = [
    (["--task", "rotten_tomatoes"], "no head for task 'rotten_tomatoes'"),
    (["--task", "trec", "--text-field", "question"], "no column 'question'"),
    (["--task", "trec", "--text-field", "text", "--text-field", "text"], "reads 1 text field"),
    (["--task", "trec", "--labels", "a,b"], "its head has 6 outputs but 2 label names"),
    (["--task", "trec", "--labels", "a,a"], "distinct"),
]


@pytest.mark.slow
@pytest.mark.parametrize("flags,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_exit_2_nothing_written(merged, tmp_path, flags, message):
    inputs = tmp_path / "in.csv"
    inputs.write_text("text\nWhat is the capital of Peru?\n")
    out = tmp_path / "out.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "osrm.cli", "predict", str(merged["dense"]), "--input",
         str(inputs), "--out", str(out), *flags],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_bad_files_and_an_existing_output(merged, tmp_path, capsys):
    model = str(merged["dense"])
    empty = tmp_path / "empty.csv"
    empty.write_text("text,id\nfine,1\n,2\n")  # the second row's text is empty
    out = tmp_path / "out.jsonl"
    cases = [
        (tmp_path / "in.xlsx", "unsupported format"),
        (tmp_path / "missing.csv", "not found"),
        (empty, "row 2: 'text' is missing, expected non-empty text"),
    ]
    for path, message in cases:
        assert (
            main(["predict", model, "--task", "trec", "--input", str(path), "--out", str(out)]) == 2
        )
        assert message in capsys.readouterr().err and not out.exists()
    out.write_text("keep me\n")
    good = tmp_path / "good.csv"
    good.write_text("text\nWhat is the capital of Peru?\n")
    args = ["predict", model, "--task", "trec", "--input", str(good), "--out", str(out)]
    assert main(args) == 2 and "exists; pass --force" in capsys.readouterr().err
    assert out.read_text() == "keep me\n"
    assert main(["-q", *args, "--force"]) == 0
    assert json.loads(out.read_text())["label"] in get_task("trec").label_names
