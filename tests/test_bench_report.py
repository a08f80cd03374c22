"""bench/report.py: docs/RESULTS.md from small synthetic result files of the real JSON shapes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "bench" / "report.py"
TASKS = ["trec", "sms_spam"]
FIXED = {"task_arithmetic": "scale=1.0", "ties": "density=0.2,scale=1.0", "weight_average": "",
         "dare_linear": "density=0.5,scale=1.0"}  # fmt: skip


def load_report():
    """bench/ is not a package: import the script from its file (its modules beside it)."""
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("bench_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


report = load_report()
claims = importlib.import_module("report_claims")
budget_claims = importlib.import_module("report_budget_claims")


def stat(mean: float, spread: float = 0.0, n: int = 2) -> dict:
    """One score aggregated over ``n`` seeds."""
    return {"mean": mean, "spread": spread, "n": n}


def row(
    init: str, model: str, method: str, hp: str, scores: tuple, norm: tuple | None, n: int = 2
) -> dict:
    """An aggregate row: per-task, avg and norm_avg as (mean, spread) over ``n`` seeds."""
    trec, sms = scores
    avg = ((trec[0] + sms[0]) / 2, 0.01)
    return {
        "init": init,
        "model": model,
        "method": method,
        "hp": hp,
        **{k: stat(*v, n=n) for k, v in (("trec", trec), ("sms_spam", sms), ("avg", avg))},
        "norm_avg": stat(*norm, n=n) if norm else None,
    }


def quality_rows() -> list[dict]:
    """Two inits; the asserts below compute their expected numbers from these by hand."""
    ta, ties, dare = "task_arithmetic", FIXED["ties"], FIXED["dare_linear"]
    return [
        row("lora", "base", "", "", ((0.3, 0.0), (0.5, 0.0)), (0.45, 0.0)),
        row("lora", "individual", "", "", ((0.80, 0.01), (0.90, 0.01)), (1.0, 0.0)),
        row("lora", "merged", ta, "scale=0.5", ((0.6, 0), (0.6, 0)), (0.70, 0.02)),
        row("lora", "merged", ta, "scale=1.0", ((0.5, 0), (0.5, 0)), (0.60, 0.03)),
        row("lora", "merged", "ties", ties, ((0.61, 0), (0.69, 0)), (0.75, 0.01)),
        # dare_* carry the run's seed: quality.py aggregates each seed on its own (n = 1)
        row("lora", "merged", "dare_linear", dare + ",seed=0", ((0.5, 0), (0.5, 0)), (0.6, 0), 1),
        row("lora", "merged", "dare_linear", dare + ",seed=1", ((0.6, 0), (0.6, 0)), (0.7, 0), 1),
        row("osrm", "individual", "", "", ((0.78, 0.01), (0.94, 0.01)), (1.0, 0.0)),
        row("osrm", "merged", ta, "scale=0.5", ((0.7, 0), (0.66, 0)), (0.80, 0.01)),
        row("osrm", "merged", ta, "scale=1.0", ((0.6, 0), (0.7, 0)), (0.78, 0.02)),
        row("osrm", "merged", "ties", ties, ((0.55, 0), (0.7, 0)), (0.72, 0.02)),
    ]


INTERFERENCE = {  # init -> adapter j -> task t -> ratio
    "lora": {"trec": {"trec": 1.0, "sms_spam": 0.5}, "sms_spam": {"trec": 0.3, "sms_spam": 1.0}},
    "osrm": {"trec": {"trec": 1.0, "sms_spam": 0.1}, "sms_spam": {"trec": 0.2, "sms_spam": 1.0}},
}
KEYS = ("other", "own", "other_random", "own_random", "overlap")
SUBSPACE = {  # per mode, per task: energy fractions captured by the task's A, and the overlap
    "cov": [
        {"task": "trec", **dict(zip(KEYS, (0.1, 0.5, 0.2, 0.2, 0.05), strict=True))},
        {"task": "sms_spam", **dict(zip(KEYS, (0.3, 0.7, 0.2, 0.2, 0.15), strict=True))},
    ]
}


def quality(variant: str = "full") -> dict:
    """A quality JSON (bench/quality.py's shape): two seeds, two tasks, two inits."""
    config = {"seed": 0, "model": {"name": "tiny"}, "lora": {"rank": 8},
              "train": {"steps": 3, "lr": 0.01, "frozen_a_steps": 9}}  # fmt: skip
    runs = [
        {"seed": s, "rows": [], "interference": INTERFERENCE, "subspace": SUBSPACE,
         "tasks": TASKS, "seconds": 1.0, "config": config}
        for s in (0, 1)
    ]  # fmt: skip
    aggregate = {"tasks": TASKS, "inits": ["lora", "osrm"], "rows": quality_rows(),
                 "interference": INTERFERENCE}  # fmt: skip
    return {"benchmark": "quality", "variant": variant, "seeds": [0, 1],
            "overrides": ["train.steps=120", "merge.methods={ties: {density: 0.2}}"],
            "config": "configs/offline-suite.yaml", "fixed": FIXED, "wall_seconds": 4800.0,
            "runs": runs, "aggregate": aggregate}  # fmt: skip


def merge_speed() -> dict:
    """bench/merge_speed.py's shape: one osrm/peft pair (with warm times), one osrm-only row."""
    rows = [
        {
            "method": "task_arithmetic",
            "peft_type": "cat",
            "osrm": {"cold_seconds": 0.5, "peak_mib": 40.0, "warm_seconds": 0.25, "rel_err": 1e-7},
            "peft": {
                "seconds": 1.0,
                "peak_mib": 30.0,
                "total_seconds": 4.0,
                "total_peak_mib": 160.0,
                "load_seconds": 3.0,
                "rel_err": 2e-7,
            },
        },
        {
            "method": "tsv",
            "peft_type": None,
            "osrm": {"cold_seconds": 2.0, "peak_mib": 90.0, "warm_seconds": None, "rel_err": 0.1},
        },
    ]
    return {"args": {"threads": 1}, "load_average": [1.0, 2.0], "rows": rows}


def decoder() -> dict:
    """bench/decoder.py's shape: flat rows from osrm.report.results_table."""
    rows = [
        {
            "init": "lora",
            "model": "individual",
            "method": "",
            "hp": "",
            "a": 0.6,
            "avg": 0.6,
            "norm_avg": 1.0,
        },
        {
            "init": "lora",
            "model": "merged",
            "method": "task_arithmetic",
            "hp": "scale=0.5",
            "a": 0.54,
            "avg": 0.54,
            "norm_avg": 0.9,
        },
        {
            "init": "lora",
            "model": "merged",
            "method": "task_arithmetic",
            "hp": "scale=1.0",
            "a": 0.48,
            "avg": 0.48,
            "norm_avg": 0.8,
        },
    ]
    return {
        "benchmark": "decoder",
        "config": "configs/smollm2-offline.yaml",
        "overrides": ["train.steps=40"],
        "seed": 0,
        "tasks": ["a"],
        "rows": rows,
        "interference": {"lora": {"a": {"a": 1.0, "b": 0.2}, "b": {"a": 0.4, "b": 1.0}}},
        "wall_seconds": 600.0,
    }


def single_task() -> dict:
    """bench/single_task.py's shape: per task one score per init, then the mean row."""
    rows = [
        {"task": "trec", "metric": "accuracy", "lora": 0.80, "osrm": 0.83},
        {"task": "sms_spam", "metric": "f1", "lora": 0.90, "osrm": 0.89},
        {"task": "mean", "metric": "", "lora": 0.85, "osrm": 0.86},
    ]
    return {
        "benchmark": "single_task",
        "rows": rows,
        "wall_seconds": 100.0,
        "config": {"seed": 0, "train": {"steps": 100, "lr": 0.003}},
    }


def index() -> dict:
    """bench/all.py's index.json: train_speed failed (no file), dist_stats never ran."""
    env = {
        "packages": {"osrm": "0.1.0", "torch": "2.13.0", "transformers": "5.0", "peft": "0.21"},
        "python": "3.11",
        "machine": "x86_64",
        "cpus": 2,
        "commit": "abc1234",
        "dirty": False,
    }
    runs = {
        name: {
            "command": f"python bench/{name}.py --json bench/results/{name}.json",
            "json": f"bench/results/{name}.json",
            "wall_seconds": 60.0,
            "returncode": 0,
            "finished": "2026-01-02T03:04:05+00:00",
            "environment": env,
        }
        for name in ("stats_overhead", "merge_speed", "quality")
    }
    runs["train_speed"] = {**runs["merge_speed"], "returncode": 1, "command": "python train"}
    suite = {
        "command": "python bench/all.py ",
        "names": list(runs),
        "wall_seconds": 7200.0,
        "failed": ["train_speed"],
    }
    partial = [
        {"command": "python bench/all.py --quick --only quality", "names": ["quality"]},
        {"command": "python bench/all.py --only quality", "names": ["quality"]},
    ]
    return {"runs": runs, "suite": suite, "partial": partial}


def write_results(root: Path) -> Path:
    """All result files under ``root/bench/results``, and a hand-written discussion."""
    results = root / "bench" / "results"
    results.mkdir(parents=True)
    files = {
        "index": index(),
        "quality": quality(),
        "quality-quick": quality("quick"),
        "merge_speed": merge_speed(),
        "decoder": decoder(),
        "single_task": single_task(),
        "stats_overhead": {"forward_s": 2.0, "stats_s": 2.3, "target_ratio": 1.15},
    }
    for name, data in files.items():
        (results / f"{name}.json").write_text(json.dumps(data))
    (root / "bench" / "interpretation.md").write_text("Hand-written *discussion*.\n")
    return results


@pytest.fixture
def document(tmp_path) -> str:
    """The document written by the command line from the synthetic results."""
    out = tmp_path / "docs" / "RESULTS.md"
    assert report.main(["--results", str(write_results(tmp_path)), "--out", str(out)]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["RESULTS.md"]  # no temporary left over
    return out.read_text()


def test_headline_picks_best_setting_and_marks_best_init(document):
    # best over the grid: lora TA scale=0.5 (0.70 > 0.60), osrm TA scale=0.5; ties has one setting
    # dare_linear's seed=0 (0.6) and seed=1 (0.7) rows pooled: mean 0.65, population std 0.05
    assert "| lora | 0.700 ± 0.020 | **0.750 ± 0.010** | **0.650 ± 0.050** |" in document
    assert "| osrm | **0.800 ± 0.010** | 0.720 ± 0.020 |  |" in document
    assert "| lora | scale=0.5 | density=0.2,scale=1.0 | density=0.5,scale=1.0 |" in document
    assert "differ only by `seed=`" in document
    # fixed settings: TA at scale=1.0
    assert "| lora | 0.600 ± 0.030 | **0.750 ± 0.010** | **0.650 ± 0.050** |" in document
    assert "| osrm | **0.780 ± 0.020** | 0.720 ± 0.020 |  |" in document


def test_quality_tables(document):
    # individual adapters: avg = (0.78 + 0.94) / 2
    assert "| osrm | 0.780 ± 0.010 | 0.940 ± 0.010 | 0.860 ± 0.010 |" in document
    # per-task merged at osrm's best TA setting: trec 0.7, sms 0.66, avg 0.68, norm 0.8
    assert "| osrm | task_arithmetic | scale=0.5 | 0.700 | 0.660 | 0.680 | 0.800 |" in document
    # λ grid and its spread (max − min): lora 0.70 − 0.60, osrm 0.80 − 0.78
    assert "| lora | 0.700 | 0.600 | 0.100 |" in document
    assert "| osrm | 0.800 | 0.780 | 0.020 |" in document
    assert "](results/quality-full-scale.png)" in document
    # mean off-diagonal interference: (0.5 + 0.3) / 2, (0.1 + 0.2) / 2
    assert "| lora | 0.400 |" in document and "| osrm | 0.150 |" in document
    # subspace means over tasks: other 0.2, own 0.6, other_random 0.2, overlap 0.1
    assert "| cov | 0.200 | 0.600 | 0.200 | 0.100 |" in document
    assert "3 steps at lr 0.01 (inits with a frozen A: 9 steps at lr 0.01)" in document


def test_interpretation_is_generated_from_the_numbers(document):
    assert (
        "osrm's best normalised average (0.800 ± 0.010, task_arithmetic) is above lora's "
        "(0.750 ± 0.010, ties) by 0.050, beyond the seed spread; osrm is higher for 1 of 2 "
        "methods at their best setting and 1 of 2 at the fixed settings." in document
    )
    assert "lora 0.850 ± 0.010, osrm 0.860 ± 0.010" in document
    assert (
        "- osrm: mean single-task score above lora's by 0.010, within the seed spread; largest "
        "per-task gap to lora +0.040 on sms_spam (beyond the seed spread)." in document
    )
    assert "osrm +0.030 on trec" in document  # single-task benchmark: 0.83 − 0.80
    assert "lora 0.100, osrm 0.020" in document
    assert "osrm: spread smaller than lora's by 0.080" in document
    assert "### Discussion\n\nHand-written *discussion*.\n" in document


def test_speed_ratios_stamps_and_missing_benchmarks(document):
    assert "| forward 2.000 s | statistics 2.300 s | 1.15 | overhead (target ≤ 1.15: met) |" in (
        document
    )
    assert "| peft total 4.00 s | osrm cold 0.50 s | 8.00 | speed-up |" in document
    assert "| peft merge 1.00 s | osrm warm 0.25 s | 4.00 | speed-up |" in document
    assert "| peft total 160 MiB | osrm 40 MiB | 0.25 | memory fraction |" in document
    assert "tsv" not in document.split("## Speed")[1].split("## Interpretation")[0]
    assert "train_speed: *Not run*" in document and "failed with exit status 1" in document
    assert "dist_stats: *Not run*" in document and "no record of a run" in document
    assert "- Suite: `python bench/all.py ` ran" in document and "2.0 h" in document
    assert "1 torch threads · 1-min load average 1.0 before, 2.0 after" in document
    assert "peft 0.21 · wall time 60.0 s" in document  # stamp from index.json
    # quality re-run after the suite: the current total is the sum of the latest stamps
    assert "Suite time after the re-runs: 240 s (4.0 min)" in document
    assert "(quality re-run after the suite)" in document


def test_other_sections_and_limits(document):
    assert "| lora | 0.600 | 0.900 (scale=0.5) | 0.300 |" in document  # decoder
    assert "| trec | accuracy | 0.800 | 0.830 |" in document  # single-task benchmark
    assert "## Quality, quick variant" in document
    assert "- `merge.methods={ties: {density: 0.2}}`" in document
    assert "seeds 0, 1" in document and "config `configs/offline-suite.yaml` + `train" in document


def test_missing_and_malformed_results_do_not_crash(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "quality.json").write_text(json.dumps({"aggregate": {"rows": "oops"}}))
    (results / "decoder.json").write_text("{not json")
    text = report.build(results)
    assert "*Could not summarise" in text
    assert "*Not run*: no usable" in text and "decoder.json" in text
    for section in ("## Speed", "## Single-task benchmark", "## Limits", "## Interpretation"):
        assert section in text


def test_comparisons_are_worded_by_the_sign_of_the_difference():
    assert claims.difference(stat(0.70, 0.02), stat(0.72, 0.01)) == (
        "below",
        " by 0.020, within the seed spread",
    )
    assert claims.difference(stat(0.75, 0.01), stat(0.70, 0.02)) == (
        "above",
        " by 0.050, beyond the seed spread",
    )
    assert claims.difference(stat(0.7001), stat(0.7002))[0] == "equal (to 3 decimals) to"
    assert claims.spread_sentence(0.3, 0.1) == "spread larger than lora's by 0.200"


def test_gpu_run_section_reads_osrm_run_output(tmp_path):
    from osrm.report import Result, append_results

    gpu = tmp_path / "gpu"
    gpu.mkdir()
    found = [
        Result("lora", "individual", "trec", "accuracy", 0.8, scores={"accuracy": 0.8}),
        Result("lora", "individual", "sms_spam", "f1", 0.5, scores={"f1": 0.5}),
        Result("lora", "merged", "trec", "accuracy", 0.6, "ties", "density=0.2",
               scores={"accuracy": 0.6}),
        Result("lora", "merged", "sms_spam", "f1", 0.25, "ties", "density=0.2",
               scores={"f1": 0.25}),
    ]  # fmt: skip
    append_results(gpu / "results.jsonl", found)
    (gpu / "run.log").write_text(
        "mean cross-task interference ratio: lora 0.795\nexit 0 after 9 s\n"
    )
    text = report.build(tmp_path)
    gpu_part = text.split("## Quality on one GPU")[1].split("\n## ")[0]
    # norm. avg of the merged row = (0.6/0.8 + 0.25/0.5) / 2 = 0.625; avg = 0.425
    assert "| lora | merged | ties | density=0.2 | 0.600 | 0.250 | 0.425 | 0.625 |" in gpu_part
    assert "exit 0 after 9 s" in gpu_part and "lora 0.795" in gpu_part


def test_llm_merge_section_states_how_peak_memory_scales(tmp_path):
    """Peaks flat across layers for osrm, doubling for peft: the ratios say so."""
    results = write_results(tmp_path)
    gib = 2**30

    def row(layers: int) -> dict:
        scale = layers / 16
        return {"layers": layers, "base_bytes": 8 * gib * scale, "adapter_bytes": 0.3 * gib * scale,
                "osrm-dense": {"seconds": 100.0 * scale, "peak_mib": 800.0,
                               "written_bytes": 8 * gib * scale},
                "osrm-lora": {"seconds": 10.0, "peak_mib": 300.0, "written_bytes": gib},
                "peft-cat": {"seconds": 20.0, "peak_mib": 600.0 * scale,
                             "written_bytes": 0}}  # fmt: skip

    data = {"shape": {"hidden": 4096, "intermediate": 14336, "kv": 1024, "vocab": 128256},
            "adapters": 8, "rank": 16, "targets": ["q_proj", "down_proj"],
            "rows": [row(32), row(16)]}  # fmt: skip
    (results / "merge_speed_llm.json").write_text(json.dumps(data))
    out = tmp_path / "R.md"
    assert report.main(["--results", str(results), "--out", str(out)]) == 0
    text = out.read_text().split("## Merging eight 8B-shaped adapters")[1]
    assert "| 32 | osrm dense (streamed checkpoint) | 200.0 | 800 | 16.00 | 16.0 | 0.60 |" in text
    assert "osrm-dense 1.00, osrm-lora 1.00, peft-cat 2.00" in text
    assert "peaks at 0.25× peft's memory in 0.50× its time" in text
    assert "peak of 0.78 GiB, 4.9 % of the base model's size" in text


def test_generate_section_counts_tasks_learnt_beyond_the_majority_class(tmp_path):
    results = write_results(tmp_path)

    def cell(base: float, ind: float, spread: float = 0.01) -> dict:
        return {"base": stat(base, 0.0), "individual": stat(ind, spread)}

    tasks = {
        "sms": {"majority": {"label": "ham", "metric": "f1", "score": 0.0, "seed": 0},
                "lora": cell(0.0, 0.9), "osrm": cell(0.0, 0.8)},
        "tweet": {"majority": {"label": "neg", "metric": "accuracy", "score": 0.45, "seed": 0},
                  "lora": cell(0.45, 0.52), "osrm": cell(0.45, 0.49, 0.0)},
    }  # fmt: skip
    data = {"variant": "full", "averages": {"lora": cell(0.2, 0.7)}, "tasks": tasks}
    (results / "generate.json").write_text(json.dumps(data))
    out = tmp_path / "R.md"
    assert report.main(["--results", str(results), "--out", str(out)]) == 0
    text = out.read_text().split("## Generative tasks on a decoder (no heads)")[1]
    assert "| sms | f1 | 0.000 (ham) | 0.000 ± 0.000 | 0.900 ± 0.010 |" in text
    # tweet: lora 0.52 − 0.01 beats 0.45 by more than 0.05; osrm 0.49 does not
    assert "majority class (individual mean − spread above it by more than 0.05): lora 2 of 2, " \
           "osrm 1 of 2." in text  # fmt: skip


def test_add_task_section_picks_lambda_and_compares_with_lora(tmp_path):
    results = write_results(tmp_path)

    def r(series, init, method, hp, before, after, new) -> dict:
        return {"series": series, "init": init, "method": method, "hp": hp,
                "old_before": stat(before, 0.01), "old_after": stat(after, 0.02),
                "new": stat(new, 0.03), "old_single_before": stat(0.8),
                "old_single_after": stat(0.8 if series == "added" else 0.79),
                # raw: the individual adapters score 0.8 (lora) and 0.7 (osrm)
                "old_after_abs": stat(after * single[init]), "new_abs": stat(new * single[init]),
                "new_single": stat(single[init])}  # fmt: skip

    single = {"lora": 0.8, "osrm": 0.7}

    rows = [
        r("added", "lora", "task_arithmetic", "scale=0.6", 0.90, 0.88, 0.70),
        r("added", "lora", "task_arithmetic", "scale=1.0", 0.85, 0.80, 0.90),
        r("added", "lora", "ties", "density=0.2", 0.80, 0.75, 0.60),
        r("added", "osrm", "task_arithmetic", "scale=0.6", 0.80, 0.80, 0.80),
        r("added", "osrm", "task_arithmetic", "scale=1.0", 0.90, 0.88, 0.94),
        r("added", "osrm", "ties", "density=0.2", 0.70, 0.70, 0.70),
    ]
    data = {"variant": "full", "seeds": [0, 1], "old_tasks": ["a", "b", "c", "d"],
            "new_task": "e", "retrofit_mu": 1.0, "rows": rows}  # fmt: skip
    (results / "add_task.json").write_text(json.dumps(data))
    out = tmp_path / "R.md"
    assert report.main(["--results", str(results), "--out", str(out)]) == 0
    text = out.read_text().split("## Adding a task later")[1].split("\n## ")[0]
    # lora, all tasks after: λ=0.6 (4·0.88 + 0.70)/5 = 0.844 beats λ=1 (4·0.80 + 0.90)/5 = 0.820
    lora_at_one = ("| added | lora | task_arithmetic | scale=1.0 (λ=1) | 0.800 ± 0.000 → "
                   "0.800 ± 0.000 | 0.800 ± 0.000 | 0.850 ± 0.010 | 0.800 ± 0.020 | -5.0 pts "
                   "| 0.900 ± 0.030 | 0.820 | 0.656 |")  # fmt: skip
    assert lora_at_one in text
    assert "| scale=0.6 (best λ) |" in text and "| 0.844 |" in text
    # osrm: λ=1 is also its best λ (0.892): one row, marked as both
    assert text.count("| added | osrm | task_arithmetic |") == 1 and "(λ=1, best λ)" in text
    # raw: osrm (4·0.88 + 0.94)·0.7/5 = 0.6244, lora 0.844·0.8 = 0.6752
    assert "task_arithmetic (best λ): best OSRM-family init `osrm` 0.892 vs `lora` 0.844 " \
           "normalised (+4.8 pts), -5.1 pts raw," in text  # fmt: skip
    assert "| scale=0.6 (best λ) |" in text and "| 0.844 | 0.675 |" in text
    assert "ties: best OSRM-family init `osrm` 0.700 vs `lora` 0.720 normalised (-2.0 pts)" in text
    assert "- Individual adapters, raw main metric: `lora` 0.800 (old) / 0.800 (new); " \
           "`osrm` 0.800 (old) / 0.700 (new)." in text  # fmt: skip


def test_budget_claims_follow_the_signs_and_spreads():
    def r(label, step, ta, ties, single, inter, drift, spread=0.01) -> dict:
        merged = lambda v: {"hp": "", "norm_avg": stat(v, spread, 3),  # noqa: E731
                            "avg": stat(v * single, spread, 3)}  # fmt: skip
        return {"label": label, "step": step, "individual": stat(single, 0.0, 3),
                "task_arithmetic": merged(ta), "ties": merged(ties),
                "interference": stat(inter, 0.0, 3), "drift_deg": stat(drift, 0.0, 3)}  # fmt: skip

    rows = [
        r("lora", 100, 0.90, 0.80, 0.70, 0.8, 20),
        r("lora", 1000, 0.85, 0.75, 0.80, 0.9, 40),
        r("osrm", 100, 0.95, 0.85, 0.70, 0.7, 10),
        r("osrm", 1000, 0.90, 0.76, 0.80, 0.75, 30),
        r("osrm+sub", 100, 0.96, 0.86, 0.69, 0.5, 0),
        r("osrm+sub", 1000, 0.95, 0.80, 0.79, 0.6, 0),
        r("lora+rf1", 1000, 0.99, 0.99, 0.80, 0.1, 0),  # post-hoc: never a trained setting
    ]
    text = "\n".join(budget_claims.claim_lines(rows))
    # osrm at 1000: TA +5.0 beyond 0.02, TIES +1.0 within it; osrm+sub beats lora on both everywhere
    assert "| osrm | 1000 | +5.0 * | +1.0 | +4.0 * | +0.8 | +0.0 | -0.150 |" in text
    assert "| osrm+sub | 100 | +6.0 * | +6.0 * |" in text and "lora+rf1" not in text
    assert (
        "(1000 steps), `osrm+sub` merges better than `lora` beyond the seed spread for both" in text
    )
    assert "; `osrm+sub` at every budget." in text
    tally = "(TA at 100, TIES at 100, TA at 1000) and behind in 0 (none)"
    assert f"`osrm` is ahead in 3 of 4 (method, budget) cells {tally}" in text
    assert "`osrm` +0.0, `osrm+sub` -1.0" in text  # single-task at 1000 steps
    assert "`lora` 20° → 40°, `osrm` 10° → 30°, `osrm+sub` 0° → 0°" in text
    # over the 6 trained rows (not lora+rf1) interference falls as the merge improves
    assert "lower interference goes with a better merge (Spearman ρ = -0.97" in text
    values = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.1)
    flat = [{**x, "interference": stat(v, 0.0, 3)} for x, v in zip(rows, values, strict=True)]
    # ρ = -0.68 but p = 0.14 over 6 rows: not called a relation
    assert "interference and merge quality show no clear relation (Spearman ρ = -0.68" in "\n".join(
        budget_claims.claim_lines(flat)
    )
    worse = [{**x, "task_arithmetic": rows[0]["task_arithmetic"]} for x in rows[:2]]
    assert budget_claims.claim_lines(worse) == []  # lora alone: nothing to compare
