"""`osrm add-task` on a tiny 3-task run whose data files are deleted first: the new adapter starts
at the OSRM bases of the saved statistics, the old adapters are untouched (or retrofitted against
the new task with --retrofit-mu, originals kept), bad inputs leave the run as it was, and the grown
run is an ordinary run that `osrm run` reuses."""

from __future__ import annotations

import csv
import json
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file

from osrm.artifacts import seal_files
from osrm.cli import main
from osrm.config import load_config
from osrm.merging.loading import load_adapters
from osrm.report import read_results
from osrm.retrofit import retrofit_a
from osrm.rundir import BEFORE_FILE, CHANGE_FILE
from osrm.stages.statistics import subspace_options
from osrm.stats import load_stats, save_stats
from osrm.subspace import osrm_bases
from tiny_workspace import make_workspace, tree

OLD = ("low", "high", "reg")


def write_mid(path) -> list[str]:
    """A 4th task on words w20..w49 (between low's and high's): the command-line task block."""
    rng = random.Random(1)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        for _ in range(96):
            ids = [rng.randrange(20, 50) for _ in range(rng.randint(3, 10))]
            writer.writerow({"text": " ".join(f"w{i}" for i in ids), "label": str(ids[0] % 2)})
    return [f"files={{train: {path}}}", "text_fields=text", "label_field=label",
            "label_names=['0', '1']"]  # fmt: skip


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    root = tmp_path_factory.mktemp("add_task")
    # A frozen (train.freeze_a): the trained adapter's A is still its initial basis
    train = {"steps": 6, "lr": 1e-2, "batch_size": 8, "max_length": 16, "freeze_a": True}
    config = make_workspace(root, train=train, merge={"methods": {
        "task_arithmetic": {"scale": 0.5}, "ties": {"density": 0.5}}})  # fmt: skip
    run = root / "run"
    assert main(["-q", "run", str(config)]) == 0
    data = {p.name: p.read_bytes() for p in (root / "data").glob("*.csv")}
    for name in data:  # the old tasks' data is gone
        (root / "data" / name).unlink()
    fields = write_mid(root / "mid.csv")
    pristine = root / "pristine"
    shutil.copytree(run, pristine)
    before = tree(run)
    assert main(["-q", "add-task", str(run), "mid", *fields]) == 0
    return {"root": root, "run": run, "pristine": pristine, "before": before, "fields": fields,
            "data": data, "config": config}  # fmt: skip


def test_new_adapter_starts_at_the_bases_of_the_saved_statistics(grown):
    run = grown["run"]
    cfg = load_config(run / "config.yaml")
    assert cfg.task_names == [*OLD, "mid"]
    assert [a.task for a in cfg.added_tasks] == ["mid"]
    stats, metas = {}, {}
    for task in cfg.task_names:
        stats[task], metas[task] = load_stats(run / "stats" / f"{task}.safetensors")
    bases = osrm_bases(stats, "mid", cfg.lora.rank, "cov", seed=cfg.seed, metas=metas,
                       **subspace_options(cfg))  # fmt: skip
    adapter = load_adapters([run / "adapters" / "osrm" / "mid"])[0]
    weights = load_file(str(adapter.weights_file))
    assert {n.removesuffix(".weight") for n in adapter.modules} == set(bases)
    for name, m in adapter.modules.items():
        base = bases[name.removesuffix(".weight")]
        torch.testing.assert_close(weights[m.key_a].double(), base.double(), atol=1e-6,
                                   rtol=0)  # fmt: skip
    # it avoids the old tasks' inputs: the old adapters' bases did not know mid
    old_bases = osrm_bases({t: stats[t] for t in OLD}, "low", cfg.lora.rank, "cov",
                           seed=cfg.seed, metas=metas, **subspace_options(cfg))  # fmt: skip
    low = load_adapters([run / "adapters" / "osrm" / "low"])[0]
    low_w = load_file(str(low.weights_file))
    for name, m in low.modules.items():
        base = old_bases[name.removesuffix(".weight")]
        torch.testing.assert_close(low_w[m.key_a].double(), base.double(), atol=1e-6,
                                   rtol=0)  # fmt: skip


def test_old_adapters_and_statistics_are_untouched(grown):
    after = tree(grown["run"])
    kept = [k for k in grown["before"] if k.startswith(("adapters/", "stats/"))
            and not k.endswith("osrm_manifest.json")]  # fmt: skip
    assert kept and all(after[k] == grown["before"][k] for k in kept)


def test_results_before_and_after(grown):
    run = grown["run"]
    history = run / "history" / "1-mid"
    assert (history / BEFORE_FILE).read_bytes() == (
        grown["pristine"] / "results.jsonl"
    ).read_bytes()
    change = json.loads((history / CHANGE_FILE).read_text())
    assert change["not_scored"] == list(OLD)  # their data was deleted
    results = read_results(run / "results.jsonl")
    merged = {(r.init, r.method, r.task) for r in results if r.kind == "merged"}
    assert {(i, m, "mid") for i in ("lora", "osrm") for m in ("task_arithmetic", "ties")} <= merged
    assert not [r for r in results if r.kind == "merged" and r.task != "mid"]  # stale: dropped
    rows = {(r["init"], r["model"]): r for r in change["rows"]}
    ties = rows["osrm", "ties density=0.5"]
    assert ties["low before"] is not None and ties["low after"] is None
    assert ties["mid before"] is None and 0 <= ties["mid after"] <= 1
    individual = rows["lora", "individual"]  # unchanged adapters keep their scores
    assert individual["low after"] == individual["low before"]
    report = (run / "results.md").read_text()  # the report shows the history
    assert "Added later (1): mid" in report and f"{ties['low before']:.3f} → not scored" in report


def test_grown_run_is_reused_by_osrm_run(grown, tmp_path):
    """With the data back, `osrm run` on the grown config retrains nothing: the adapters trained
    before the addition keep their fingerprints (they never knew the new task)."""
    root, run = grown["root"], grown["run"]
    for name, blob in grown["data"].items():
        (root / "data" / name).write_bytes(blob)
    try:
        adapters = {k: v for k, v in tree(run).items() if k.startswith("adapters/")}
        assert main(["-q", "run", str(run / "config.yaml")]) == 0
        again = tree(run)
        assert all(again[k] == v for k, v in adapters.items())
        results = read_results(run / "results.jsonl")
        assert {r.task for r in results if r.kind == "merged"} == {*OLD, "mid"}
    finally:
        for name in grown["data"]:
            (root / "data" / name).unlink()


def test_retrofit_mu_retrofits_old_adapters_against_the_new_task(grown, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(grown["pristine"], run)
    original = {k: v for k, v in tree(run).items() if k.startswith("adapters/")}
    assert main(["-q", "add-task", str(run), "mid", *grown["fields"], "--retrofit-mu", "2"]) == 0
    history = run / "history" / "1-mid" / "adapters"
    assert {k: v for k, v in tree(history).items() if not k.endswith(".json")} == {
        k.removeprefix("adapters/"): v for k, v in original.items() if not k.endswith(".json")
        and "/mid/" not in k}  # fmt: skip
    stats = {t: load_stats(run / "stats" / f"{t}.safetensors")[0] for t in ("high", "mid")}
    old = load_adapters([history / "lora" / "high"])[0]
    new = load_adapters([run / "adapters" / "lora" / "high"])[0]
    w_old, w_new = load_file(str(old.weights_file)), load_file(str(new.weights_file))
    for name, m in old.modules.items():
        module = name.removesuffix(".weight")
        c_own, c_new = (stats[t][module].second_moment() for t in ("high", "mid"))
        expected = retrofit_a(w_old[m.key_a], c_own, c_new, 2.0)
        torch.testing.assert_close(w_new[m.key_a], expected.to(w_new[m.key_a].dtype))
        assert torch.equal(w_new[m.key_b], w_old[m.key_b])
    assert load_config(run / "config.yaml").added_tasks[0].retrofit_mu == 2.0
    # finished: adding it again is refused
    assert main(["-q", "add-task", str(run), "mid", *grown["fields"]]) == 2


def _refused(run, args, capsys, match):
    before = tree(run)
    try:
        code = main(["add-task", str(run), *args])
    except SystemExit as e:  # argparse's own checks
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1, err
    assert tree(run) == before  # the run untouched


def test_bad_inputs_leave_the_run_untouched(grown, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(grown["pristine"], run)
    fields = grown["fields"]
    _refused(run, ["low"], capsys, "already a task")
    _refused(run, ["mid", *fields, "--retrofit-mu", "-1"], capsys, "--retrofit-mu")
    _refused(run, ["mid", "text_fields=text"], capsys, "mid")  # an incomplete task block
    _refused(tmp_path, ["mid", *fields], capsys, "no config.yaml")
    _refused(tmp_path / "nowhere", ["mid", *fields], capsys, "no config.yaml")
    # statistics of another base model: low's file with another fingerprint, sealed as ours
    path = run / "stats" / "low.safetensors"
    stats, meta = load_stats(path)
    from dataclasses import replace

    save_stats(path, stats, replace(meta, fingerprint="0" * 64, base_model="other/model"))
    seal_files([path])
    _refused(run, ["mid", *fields], capsys, "another base model")
    path.unlink()  # a run without statistics
    _refused(run, ["mid", *fields], capsys, "needs every task's statistics")


class Interrupted(Exception):
    """Stands for a kill: raised by a patched step of the addition."""


def _kept_results(run) -> set:
    return {(r.kind, r.init, r.method, r.hp, r.task, r.step, r.score)
            for r in read_results(run / "results.jsonl")}  # fmt: skip


@pytest.mark.parametrize("step", ["keep_valid_results", "score_and_report"])
def test_an_interrupted_addition_is_finished_by_running_it_again(grown, tmp_path, monkeypatch,
                                                                    capsys, step):  # fmt: skip
    """Killed after the retrofit (before the config lists the task) or while scoring (after):
    running the same command again ends where an uninterrupted addition ends; another μ is
    refused while it is unfinished."""
    args = ["mid", *grown["fields"], "--retrofit-mu", "2"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    for path in (reference, run):
        shutil.copytree(grown["pristine"], path)
    assert main(["-q", "add-task", str(reference), *args]) == 0

    def crash(*a, **k):
        raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(f"osrm.add_task.{step}", crash)
        with pytest.raises(Interrupted):
            main(["-q", "add-task", str(run), *args])
    assert not (run / "history" / "1-mid" / CHANGE_FILE).exists()
    resumed = step == "score_and_report"  # the config was written before scoring
    assert (load_config(run / "config.yaml").task_names[-1] == "mid") == resumed
    capsys.readouterr()
    wrong = ["mid", *grown["fields"]] + (["--retrofit-mu", "1"] if resumed else [])
    _refused(run, wrong, capsys, "--retrofit-mu")
    assert main(["-q", "add-task", str(run), *args]) == 0
    same = [k for k in tree(reference) if k.startswith(("adapters/", "stats/", "history/"))
            and k.endswith(".safetensors")]  # fmt: skip
    assert same and {k: tree(run)[k] for k in same} == {k: tree(reference)[k] for k in same}
    assert _kept_results(run) == _kept_results(reference)
    assert load_config(run / "config.yaml") == load_config(reference / "config.yaml").model_copy(
        update={"run_dir": load_config(run / "config.yaml").run_dir}
    )
