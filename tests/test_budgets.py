"""Budgets inside one run (train.checkpoints): the adapter saved at step k is the adapter of a run
stopped at k on the same schedule, byte for byte; resume and re-runs keep that; off = today."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file

from conftest import make_tiny_bert
from osrm.adapters import RECORD_FILE, save_adapter
from osrm.cli import main
from osrm.config import TrainSection, dump_config, load_config, parse_config
from osrm.errors import OsrmError
from osrm.report import Result, append_results, read_results, results_table, table_columns
from osrm.rundir import adapter_dir, budget_dir
from osrm.safety import ADAPTER_WEIGHTS, PROVENANCE_FILE
from osrm.stages.training import run_fingerprint
from osrm.train import TrainResult, train
from test_train import CFG, learnable, peft
from tiny_workspace import make_workspace, tree

TARGETS = ["query", "value"]
SHORT = CFG.model_copy(update={"steps": 14, "checkpoint_every": 4})  # checkpoints at 4, 8, 12


def weights(path: Path) -> bytes:
    return (path / ADAPTER_WEIGHTS).read_bytes()


def saver(model, root: Path, seen: list[TrainResult]):
    """An ``on_budget`` hook that saves the adapter to ``root/<step>``, as the stage does."""

    def save(result: TrainResult) -> None:
        seen.append(result)
        save_adapter(model, root / str(result.steps))

    return save


def stopped_at(step: int, root: Path) -> tuple[TrainResult, Path]:
    """A separate run on ``SHORT``'s schedule, stopped after ``step``, its adapter saved."""
    model = peft(make_tiny_bert, TARGETS)
    result = train(model, learnable, SHORT, stop_at=step, progress=False)
    return result, save_adapter(model, root / f"stopped{step}")


def test_budget_equals_a_run_stopped_there_byte_for_byte(tmp_path):
    model, seen = peft(make_tiny_bert, TARGETS), []
    full = train(model, learnable, SHORT, budgets={5, 10}, on_budget=saver(model, tmp_path, seen),
                 progress=False)  # fmt: skip
    assert full.steps == 14 and [r.steps for r in seen] == [5, 10]
    for budget in seen:
        result, stopped = stopped_at(budget.steps, tmp_path)
        assert weights(tmp_path / str(budget.steps)) == weights(stopped)
        # the same trajectory, cut short: same losses, and the schedule still that of 14 steps
        assert result.steps == budget.steps and result.losses == budget.losses
        assert budget.losses == full.losses[: budget.steps]
    assert weights(tmp_path / "5") != weights(tmp_path / "10")  # it did train in between
    final = save_adapter(model, tmp_path / "final")
    assert weights(final) != weights(tmp_path / "10")


def test_a_run_stopped_at_k_keeps_the_full_schedule():
    """Stopping at k is not a k-step run: the warm-up and decay are those of ``steps``."""
    short = peft(make_tiny_bert, TARGETS)
    train(short, learnable, SHORT.model_copy(update={"steps": 5}), progress=False)
    cut = peft(make_tiny_bert, TARGETS)
    train(cut, learnable, SHORT, stop_at=5, progress=False)
    pairs = zip(short.parameters(), cut.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)


def test_interrupted_run_resumes_and_saves_the_same_budgets(tmp_path):
    straight, seen = peft(make_tiny_bert, TARGETS), []
    save = saver(straight, tmp_path / "a", seen)
    train(straight, learnable, SHORT, budgets={5, 10}, on_budget=save, progress=False)

    def interrupt(step, loss):
        if step == 9:
            raise KeyboardInterrupt

    ckpt, out, got = tmp_path / "ckpt", tmp_path / "b", []
    first = peft(make_tiny_bert, TARGETS)
    with pytest.raises(KeyboardInterrupt):
        train(first, learnable, SHORT, checkpoint_dir=ckpt, budgets={5, 10}, progress=False,
              on_budget=saver(first, out, got), on_step=interrupt)  # fmt: skip
    assert [r.steps for r in got] == [5] and (out / "5").is_dir()  # last checkpoint: step 8
    resumed = peft(make_tiny_bert, TARGETS, seed=123)  # other starting weights: all from ckpt
    result = train(resumed, learnable, SHORT, checkpoint_dir=ckpt, budgets={10}, progress=False,
                   on_budget=saver(resumed, out, got))  # fmt: skip
    assert result.resumed_from == 8 and [r.steps for r in got] == [5, 10]
    for step in (5, 10):
        assert weights(out / str(step)) == weights(tmp_path / "a" / str(step))
    # a budget before the checkpoint is still to be saved: the run starts over to pass it
    shutil.rmtree(ckpt)
    again = peft(make_tiny_bert, TARGETS)
    with pytest.raises(KeyboardInterrupt):
        train(again, learnable, SHORT, checkpoint_dir=ckpt, on_step=interrupt, progress=False)
    shutil.rmtree(out / "5")
    redo = peft(make_tiny_bert, TARGETS)  # as the stage builds it: the run's seeded start
    result = train(redo, learnable, SHORT, checkpoint_dir=ckpt, budgets={5}, progress=False,
                   on_budget=saver(redo, out, got))  # fmt: skip
    assert result.resumed_from == 0 and weights(out / "5") == weights(tmp_path / "a" / "5")


@pytest.mark.parametrize(
    "checkpoints,message",
    [
        ([0], "field 'train.checkpoints.0': Input should be greater than or equal to 1 (got 0)"),
        ([5, 3], "field 'train.checkpoints': expected strictly increasing steps, got [5, 3]"),
        ([4, 4], "field 'train.checkpoints': expected strictly increasing steps, got [4, 4]"),
        ([3, 9], "field 'train': checkpoints: step 9 is beyond the run's 8 steps"),
    ],
)
def test_config_refuses_bad_budgets_in_one_line(checkpoints, message):
    data = {"tasks": ["a", "b"], "train": {"steps": 8, "checkpoints": checkpoints}}
    with pytest.raises(OsrmError) as info:
        parse_config(data)
    assert str(info.value) == f"config: {message}"


def test_budgets_fit_the_steps_of_every_adapter():
    ok = parse_config({"tasks": ["a", "b"], "train": {"steps": 8, "checkpoints": [1, 8]}})
    assert ok.train.checkpoints == [1, 8]
    frozen = {"steps": 8, "frozen_a_steps": 5, "checkpoints": [3, 8]}
    assert parse_config({"tasks": ["a", "b"], "train": frozen})  # no init freezes A
    with pytest.raises(OsrmError) as info:
        parse_config({"tasks": ["a", "b"], "train": {**frozen, "freeze_a": True}})
    assert str(info.value) == (
        "config: train.checkpoints: step 8 is beyond train.frozen_a_steps (5), the steps of the "
        "adapters whose A is frozen"
    )


def test_no_budgets_dumps_and_fingerprints_as_before():
    """checkpoints: [] leaves config.yaml, training records and fingerprints as they were."""
    assert "checkpoints" not in TrainSection().model_dump()
    cfg = parse_config({"tasks": ["a", "b"]})
    assert "checkpoints" not in dump_config(cfg)
    with_budgets = parse_config({"tasks": ["a", "b"], "train": {"checkpoints": [100]}})
    assert yaml.safe_load(dump_config(with_budgets))["train"]["checkpoints"] == [100]
    assert parse_config(cfg.model_dump()) == cfg
    # the budgets saved on the way do not change what the last step's adapter is
    assert run_fingerprint(with_budgets, "a", "lora") == run_fingerprint(cfg, "a", "lora")


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    """A tiny workspace trained twice: without budgets and with budgets [3, 8] (8 = last step)."""
    root = tmp_path_factory.mktemp("budgets")
    config = make_workspace(root, n_tasks=2)
    runs = {"none": root / "none", "some": root / "some"}
    assert main(["-q", "train", str(config), f"run_dir={runs['none']}"]) == 0
    budgets = ["train.checkpoints=[3, 8]"]
    assert main(["-q", "train", str(config), f"run_dir={runs['some']}", *budgets]) == 0
    return config, runs


def test_pipeline_saves_every_budget_as_a_plain_adapter(budget_run):
    config, runs = budget_run
    cfg = load_config(config)
    assert not (runs["none"] / "budgets").exists()
    assert sorted(p.name for p in (runs["some"] / "budgets").iterdir()) == ["0", "3", "8"]
    for init in ("lora", "osrm"):
        for task in ("low", "high"):
            # budgets/0: the adapter as initialised, the reference for the drift of A
            start = load_file(budget_dir(runs["some"], 0, init, task) / ADAPTER_WEIGHTS)
            assert all(not w.any() for n, w in start.items() if "lora_B" in n)
            first = json.loads((budget_dir(runs["some"], 0, init, task) / RECORD_FILE).read_text())
            assert first["step"] == first["steps"] == 0 and first["losses"] == []
            final = adapter_dir(runs["some"], init, task)
            # the final adapter is the same with or without budgets on the way
            assert weights(final) == weights(adapter_dir(runs["none"], init, task))
            last, early = (budget_dir(runs["some"], k, init, task) for k in (8, 3))
            assert weights(last) == weights(final) and weights(early) != weights(final)
            for name in ("adapter_config.json", PROVENANCE_FILE):
                assert (early / name).read_bytes() == (final / name).read_bytes()
            record, end = (json.loads((d / RECORD_FILE).read_text()) for d in (early, final))
            assert record["step"] == record["steps"] == 3 and "step" not in end
            assert record["losses"] == end["losses"][:3] and end["train"]["checkpoints"] == [3, 8]
            assert record["fingerprint"] != end["fingerprint"]
    # a budget is a plain peft adapter: vanilla peft loads it onto the base model
    from osrm.models import load_model

    base, _ = load_model(cfg.model.name, num_labels=2)
    loaded = PeftModel.from_pretrained(base, str(budget_dir(runs["some"], 3, "osrm", "low")))
    assert isinstance(loaded, PeftModel)


def test_rerun_reuses_budgets_and_redoes_only_a_missing_one(budget_run, tmp_path):
    config, runs = budget_run
    run = tmp_path / "run"
    shutil.copytree(runs["some"], run)
    overrides = [f"run_dir={run}", "train.checkpoints=[3, 8]"]
    copied = tree(run)
    assert main(["-q", "train", str(config), *overrides]) == 0
    before = tree(run)  # config.yaml records the new run_dir; nothing else changed
    assert [k for k in before if before[k] != copied.get(k)] == ["config.yaml"]
    assert main(["-q", "train", str(config), *overrides]) == 0
    assert tree(run) == before  # nothing trained again
    early = budget_dir(run, 3, "osrm", "low")
    shutil.rmtree(early)
    assert main(["-q", "train", str(config), *overrides]) == 0
    after = tree(run)
    changed = sorted(k for k in before if after.get(k) != before[k])
    # only the missing budget was written (training.json differs in its wall-clock seconds)
    assert changed == ["budgets/3/osrm/low/osrm_manifest.json", "budgets/3/osrm/low/training.json"]
    assert not list(run.rglob("*.ckpt"))


def test_results_of_a_budget_are_normalised_by_the_budget_individuals(tmp_path):
    """norm_avg of a budget's merge divides by the individual scores at the same step."""
    rows = [
        ("individual", None, {"a": 0.8, "b": 0.5}),
        ("merged", None, {"a": 0.4, "b": 0.5}),
        ("individual", 3, {"a": 0.5, "b": 0.25}),
        ("merged", 3, {"a": 0.4, "b": 0.25}),
    ]
    results = [
        Result(
            init="osrm",
            kind=kind,
            task=t,
            metric="accuracy",
            score=v,
            step=step,
            method="ties" if kind == "merged" else "",
        )  # fmt: skip
        for kind, step, scores in rows
        for t, v in scores.items()
    ]
    path = tmp_path / "results.jsonl"
    append_results(path, results)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert ["step" in line for line in lines] == [False] * 4 + [True] * 4  # final: as before
    assert read_results(path) == results
    table = {(r.get("step"), r["model"]): r for r in results_table(results, ["a", "b"])}
    assert list(table) == [(3, "individual"), (3, "merged"), (None, "individual"),
                           (None, "merged")]  # fmt: skip
    assert table[3, "merged"]["norm_avg"] == pytest.approx((0.4 / 0.5 + 1.0) / 2)  # 0.9
    assert table[None, "merged"]["norm_avg"] == pytest.approx((0.5 + 1.0) / 2)  # 0.75
    assert table[3, "merged"]["avg"] == pytest.approx(0.325)
    assert "step" not in table_columns(["a"]) and "step" in table_columns(["a"], steps=True)


def test_run_scores_and_merges_every_budget(tmp_path):
    merge = {"methods": {"task_arithmetic": {"scale": 0.5}}}
    config = make_workspace(tmp_path, n_tasks=2, merge=merge)
    run = tmp_path / "run"
    assert main(["-q", "run", str(config), "train.checkpoints=[4]"]) == 0
    results = read_results(run / "results.jsonl")
    steps = {(r.init, r.kind, r.step) for r in results}
    kinds = ("base", "individual", "merged")
    assert steps == {(i, k, s) for i in ("lora", "osrm") for k in kinds for s in (4, None)}
    assert len(results) == 2 * 3 * 2 * 2  # inits x kinds x (budget, final) x tasks
    header = (run / "results.md").read_text().split("| init | step | model |")
    assert len(header) == 2  # the table has a step column
    before = tree(run)
    assert main(["-q", "run", str(config), "train.checkpoints=[4]"]) == 0
    assert tree(run)["results.jsonl"] == before["results.jsonl"]  # nothing scored again
