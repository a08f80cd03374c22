"""Fuzzing the command line: any config value or flag gives exit 0, or exit 2 with one line.

Hypothesis draws values of every type (huge and negative integers, NaN/inf floats, strings,
lists, mappings, None, booleans) for config overrides, user task-block fields and numeric
flags of `osrm eval` and `osrm merge`. Every command must end with status 0, or with status 2,
exactly one stderr line ``osrm: error: ...`` and no traceback; on status 2 nothing was written
(the run directory or --out is absent).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from osrm.cli import main
from tiny_workspace import leftovers, make_workspace

TASKS = ("low", "high", "reg")
# CI replays the same examples every run (derandomize); OSRM_FUZZ_EXAMPLES=N explores anew.
FUZZ = settings(
    max_examples=int(os.environ.get("OSRM_FUZZ_EXAMPLES", "60")),
    derandomize="OSRM_FUZZ_EXAMPLES" not in os.environ,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.integers(min_value=-3, max_value=70),  # small values, near the valid ranges
    st.floats(allow_nan=True, allow_infinity=True),
    text,
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)  # fmt: skip
# values near the valid ones (so that many commands get past validation and run)
WORDS = [
    "auto",
    "cpu",
    "cuda",
    "float32",
    "bfloat16",
    "query",
    "value",
    "dense",
    "osrm",
    "lora",
    "cov",
    "mean",
    "contrast",
    "attention",
    "none",
    "test",
    "validation",
    "text",
    "label",
]
near = st.one_of(
    st.integers(min_value=-2, max_value=70),
    st.floats(min_value=-1, max_value=2),
    st.sampled_from(WORDS),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=2),
    st.lists(st.floats(min_value=-1, max_value=2), min_size=1, max_size=3),
)
any_value = st.one_of(values, near)
flag_text = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.integers(min_value=-2, max_value=40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    text,
)
CONFIG_KEYS = [
    "seed", "model.device", "model.dtype", "model.trust_remote_code", "lora.rank", "lora.alpha",
    "lora.dropout", "lora.target_modules", "lora.inits", "stats.examples", "stats.batch_size",
    "stats.max_length", "stats.mask", "subspace.modes", "subspace.ridge", "subspace.center",
    "train.lr", "train.steps", "merge.weights", "merge.methods", "eval.batch_size",
    "eval.max_eval_examples", "eval.split",
]  # fmt: skip
TASK_KEYS = [
    "name", "text_fields", "label_field", "label_names", "label_values", "metrics",
    "main_metric", "files", "splits", "regression", "source", "subset", "size", "description",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("fuzz")
    config = make_workspace(ws, inits=("osrm",))
    assert main(["-q", "train", str(config)]) == 0
    return ws


def cli(capsys, argv: list[str]) -> tuple[int, str]:
    """Exit status and stderr of one CLI call, checked: 0, or 2 with one ``osrm: error`` line."""
    capsys.readouterr()
    try:
        code = main(["-q", *argv])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        lines = [ln for ln in err.splitlines() if " WARNING " not in ln]
        assert len(lines) == 1 and lines[0].startswith("osrm: error: "), (argv, err)
    event(f"exit {code}")  # --hypothesis-show-statistics: how many got through
    return code, err


def yaml_text(value: object) -> str:
    """An override's value as a user would type it (YAML flow style)."""
    try:
        return (
            yaml.safe_dump(value, default_flow_style=True, width=10**6)
            .strip()
            .removesuffix("\n...")
        )
    except yaml.YAMLError:
        return json.dumps(value, default=str)


@FUZZ
@given(key=st.sampled_from(CONFIG_KEYS), value=any_value)
def test_fuzz_config_overrides(trained, capsys, key, value):
    case = Path(tempfile.mkdtemp(dir=trained))
    try:
        run = case / "run"
        code, err = cli(capsys, ["stats", str(trained / "tiny.yaml"), f"run_dir={run}",
                                 f"{key}={yaml_text(value)}"])  # fmt: skip
        if code == 2:
            assert not run.exists(), f"{key}={value!r}: run directory written before: {err}"
        else:
            assert (run / "stats" / "osrm_manifest.json").is_file()
        assert not leftovers(case)
    finally:
        shutil.rmtree(case)


TRAIN_KEYS = [
    "train.batch_size", "train.grad_accum", "train.max_length", "train.max_train_examples",
    "train.epochs", "train.warmup_ratio", "train.weight_decay", "train.max_grad_norm",
    "train.checkpoint_every", "train.lr", "train.precision", "train.frozen_a_lr", "lora.alpha",
    "lora.dropout", "lora.rank",
]  # fmt: skip


@settings(FUZZ, max_examples=max(10, FUZZ.max_examples // 3))
@given(key=st.sampled_from(TRAIN_KEYS), value=any_value)
def test_fuzz_training_settings(trained, capsys, key, value):
    """`osrm train` (one step, one init) with a fuzzed training setting."""
    case = Path(tempfile.mkdtemp(dir=trained))
    try:
        run = case / "run"
        fixed = ["lora.inits=[lora]", "train.steps=1", "train.checkpoint_every=0"]
        argv = ["train", str(trained / "tiny.yaml"), f"run_dir={run}", *fixed]
        argv.append(f"{key}={yaml_text(value)}")
        code, err = cli(capsys, argv)
        if code == 2:  # refused before anything was trained, or a guard on the trained weights
            assert not (run / "adapters").exists() or "NaN or Inf" in err, err
        assert not leftovers(case)
    finally:
        shutil.rmtree(case)


@FUZZ
@given(key=st.sampled_from([*TASK_KEYS, "typo"]), value=any_value, index=st.integers(0, 2))
def test_fuzz_task_block_fields(trained, capsys, key, value, index):
    case = Path(tempfile.mkdtemp(dir=trained))
    try:
        data = yaml.safe_load((trained / "tiny.yaml").read_text())
        data["run_dir"] = str(case / "run")
        data["tasks"][index][key] = value
        config = case / "c.yaml"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        code, err = cli(capsys, ["stats", str(config)])
        if code == 2:
            assert not (case / "run").exists(), f"{key}={value!r}: written before: {err}"
    finally:
        shutil.rmtree(case)


@FUZZ
@given(flag=st.sampled_from(["--batch-size", "--max-length", "--max-examples", "--seed"]),
       value=flag_text)  # fmt: skip
def test_fuzz_eval_flags(trained, capsys, flag, value):
    adapter = trained / "run" / "adapters" / "osrm" / "low"
    argv = ["eval", "--adapter", str(adapter), "--task", "sms_spam", "--split", "validation"]
    if flag != "--max-examples":
        argv += ["--max-examples", "8"]
    cli(capsys, [*argv, f"{flag}={value}"])


MERGE_FLAGS = st.fixed_dictionaries(
    {"--method": st.sampled_from(["task_arithmetic", "ties", "dare_ties", "tsv", "nosuch"]),
     "--format": st.sampled_from(["lora", "dense"])},
    optional={"--scale": flag_text, "--density": flag_text, "--rank": flag_text,
              "--seed": flag_text, "--weights": st.lists(flag_text, min_size=1, max_size=4),
              "--hp": st.lists(st.builds(lambda k, v: f"{k}={yaml_text(v)}", st.sampled_from(
                  ["seed", "density", "scale", "normalize", "majority_sign", "alpha", "k"]),
                  any_value), min_size=1, max_size=2)},
)  # fmt: skip


@FUZZ
@given(flags=MERGE_FLAGS)
def test_fuzz_merge_flags(trained, capsys, flags):
    case = Path(tempfile.mkdtemp(dir=trained))
    try:
        out = case / "out"
        argv = ["merge", *[str(trained / "run" / "adapters" / "osrm" / t) for t in TASKS]]
        for flag, value in flags.items():
            argv += [flag, *value] if isinstance(value, list) else [f"{flag}={value}"]
        code, err = cli(capsys, [*argv, "--out", str(out)])
        if code == 2:
            assert not out.exists(), f"{flags}: --out written before the error: {err}"
        else:
            assert (out / "osrm_manifest.json").is_file()
        assert not leftovers(case) and sorted(p.name for p in case.iterdir()) in ([], ["out"])
    finally:
        shutil.rmtree(case)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), text),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
RESULT = {"init": "osrm", "kind": "base", "task": "low", "metric": "accuracy", "score": 0.5}


@FUZZ
@given(
    field=st.sampled_from([*RESULT, "scores", "hp", "method"]),
    value=st.one_of(json_values, text, st.floats(), st.sampled_from(["base", "merged", "x=1"])),
    matrices=st.one_of(st.sampled_from([{"osrm": {"low": {"low": 1.0}}}, {}]), json_values),
)
def test_fuzz_run_dir_artifacts(trained, capsys, field, value, matrices):
    """`osrm report` on a run directory whose results line and interference.json are fuzzed."""
    case = Path(tempfile.mkdtemp(dir=trained))
    try:
        run = case / "run"
        run.mkdir()
        shutil.copy(trained / "run" / "config.yaml", run)
        lines = [json.dumps({**RESULT, "task": t}) for t in TASKS[1:]]
        lines.append(json.dumps({**RESULT, field: value}))
        (run / "results.jsonl").write_text("\n".join(lines) + "\n")
        (run / "interference.json").write_text(json.dumps(matrices))
        before = sorted(p.name for p in run.iterdir())
        code, err = cli(capsys, ["report", str(run)])
        if code == 2:
            assert sorted(p.name for p in run.iterdir()) == before, err
        else:
            assert (run / "report.html").is_file()
    finally:
        shutil.rmtree(case)
