"""Configs: every shipped YAML validates; unknown keys and bad overrides fail with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from osrm.config import apply_overrides, dump_config, load_config, parse_config
from osrm.errors import OsrmError
from osrm.pipeline import DEMO_CONFIG
from osrm.stages.evaluation import merge_grid

CONFIGS = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))


def test_configs_exist():
    assert {p.name for p in CONFIGS} == {
        "demo.yaml", "demo-quick.yaml", "offline-suite.yaml", "glue-roberta-large.yaml",
        "glue-llama3-8b.yaml", "smollm2-offline.yaml", "smollm2-generate.yaml",
    }  # fmt: skip


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.tasks and cfg.lora.rank >= 1
    assert merge_grid(cfg)  # every method and hyperparameter name is valid
    assert parse_config(__import__("yaml").safe_load(dump_config(cfg))) == cfg  # dump round-trips


def test_packaged_demo_configs_are_the_shipped_ones():
    for packaged in (DEMO_CONFIG, DEMO_CONFIG.with_name("demo-quick.yaml")):
        assert (
            packaged.read_text()
            == (Path(__file__).parents[1] / "configs" / packaged.name).read_text()
        )


def test_typed_overrides():
    cfg = load_config(
        DEMO_CONFIG, ["lora.rank=16", "tasks=[trec, sms_spam]", "subspace.center=true"]
    )
    assert cfg.lora.rank == 16 and cfg.tasks == ["trec", "sms_spam"] and cfg.subspace.center is True
    assert load_config(DEMO_CONFIG).lora.rank == 8  # the file is untouched


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "lora.rnak=4",
            r"unknown key 'lora.rnak'; valid keys: \['a_subspace', 'alpha', 'dropout', 'inits'",
        ),
        ("extra=1", "unknown key 'extra'; valid keys:"),
        ("lora.rank=abc", "field 'lora.rank': Input should be a valid integer"),
        ("lora.rank=0", "field 'lora.rank': Input should be greater than or equal to 1"),
        ("lora.dropout=1.5", "field 'lora.dropout'"),
        ("subspace.modes=[eig]", "field 'subspace.modes.0'"),
        ("tasks=[trec]", "field 'tasks': List should have at least 2 items"),
        ("lora.rank", "expected key=value"),
        ("lora=3", "field 'lora'"),
        ("lora.rank.x=3", "'rank' is not a section"),
    ],
)
def test_bad_overrides_fail_with_one_line(override, message):
    with pytest.raises(OsrmError, match=message) as info:
        load_config(DEMO_CONFIG, [override])
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(OsrmError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("tasks: [a, b\n")
    with pytest.raises(OsrmError, match="bad.yaml: not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(OsrmError, match="mapping of sections"):
        load_config(tmp_path / "list.yaml")


def test_apply_overrides_copies():
    data = {"lora": {"rank": 8}}
    assert apply_overrides(data, ["lora.rank=4"]) == {"lora": {"rank": 4}}
    assert data == {"lora": {"rank": 8}}


def test_user_task_blocks_resolve_relative_to_the_config(tmp_path):
    from osrm.tasks.registry import task_spec

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "reviews.csv").write_text("review,stars\ngood,pos\nbad,neg\nfine,pos\n")
    (tmp_path / "cfg.yaml").write_text(
        "tasks:\n  - trec\n  - name: reviews\n    files: {train: data/reviews.csv}\n"
        "    text_fields: [review]\n    label_field: stars\n    label_names: [neg, pos]\n"
    )
    cfg = load_config(tmp_path / "cfg.yaml")
    assert cfg.task_names == ["trec", "reviews"]
    spec = task_spec(cfg, "reviews")
    assert spec.files == (("train", str(tmp_path / "data" / "reviews.csv")),)
    assert task_spec(cfg, "trec").num_labels == 6
    with pytest.raises(OsrmError, match="task names must be unique"):
        load_config(tmp_path / "cfg.yaml", ["tasks=[trec, trec]"])
    with pytest.raises(OsrmError, match="not in the config's tasks"):
        task_spec(cfg, "sms_spam")
