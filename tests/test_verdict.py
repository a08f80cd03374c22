"""The report's verdict is computed from the results table: checked on hand-made tables."""

from __future__ import annotations

import pytest

from osrm.report import Result, results_table
from osrm.verdict import html, is_default, markdown, osrm_family, pooled, verdict

TASKS = ["a", "b"]
INDIVIDUAL = {"lora": (0.8, 0.5), "osrm": (0.8, 0.5)}


def table(merged: dict[tuple[str, str, str], tuple[float, float]], step: int | None = None):
    """Results-table rows: individual scores of INDIVIDUAL, merged (init, method, hp) -> scores."""
    out = [Result(i, "individual", t, "accuracy", s, step=step)
           for i, sc in INDIVIDUAL.items() for t, s in zip(TASKS, sc, strict=True)]  # fmt: skip
    for (init, method, hp), scores in merged.items():
        out += [Result(init, "merged", t, "accuracy", s, method, hp, step=step)
                for t, s in zip(TASKS, scores, strict=True)]  # fmt: skip
    return results_table(out, TASKS)


# normalised average = (a / 0.8 + b / 0.5) / 2
OSRM_WINS = {
    ("lora", "task_arithmetic", "scale=0.5"): (0.6, 0.4),  # 0.775
    ("lora", "task_arithmetic", "scale=1.0"): (0.4, 0.4),  # 0.65
    ("osrm", "task_arithmetic", "scale=0.5"): (0.72, 0.45),  # 0.9
    ("osrm", "task_arithmetic", "scale=1.0"): (0.64, 0.4),  # 0.8
    ("lora", "ties", "density=0.2,scale=1.0"): (0.64, 0.35),  # 0.75
    ("osrm", "ties", "density=0.2,scale=1.0"): (0.72, 0.4),  # 0.85
    ("lora", "ties", "density=0.2,scale=1.0,weights=auto"): (0.8, 0.5),  # 1.0, not default
    ("osrm", "ties", "density=0.2,scale=1.0,weights=auto"): (0.4, 0.25),  # 0.5
}


def test_defaults_and_family():
    assert is_default("task_arithmetic", "scale=1.0") and is_default("task_arithmetic", "")
    assert not is_default("task_arithmetic", "scale=0.5")
    assert not is_default("task_arithmetic", "scale=1.0,weights=auto")
    assert is_default("ties", "density=0.2,scale=1.0") and not is_default("ties", "density=0.5")
    assert is_default("dare_ties", "density=0.5,scale=1.0,seed=3")  # the draw's seed aside
    assert is_default("ties", "majority_sign=total") and not is_default(
        "ties", "majority_sign=frequency"
    )
    assert [osrm_family(i) for i in ("lora", "osrm", "contrast", "lora+rf0.5", "osrm+sub")] == [
        False, True, True, True, True]  # fmt: skip


def test_best_model_rows_and_advice_when_osrm_wins():
    v = verdict([table(OSRM_WINS)])
    assert v["best"]["init"] == "lora" and v["best"]["method"] == "ties"  # auto weights: 1.0
    assert v["best"]["score"].mean == pytest.approx(1.0)
    rows = {(r["method"], r["choice"]): r for r in v["rows"]}
    ta_best, ta_fixed = rows[("task_arithmetic", "best")], rows[("task_arithmetic", "fixed")]
    assert ta_best["cells"]["osrm"].hp == "scale=0.5"
    assert ta_best["family_minus_lora"] == pytest.approx(0.9 - 0.775)
    assert ta_fixed["cells"]["lora"].hp == "scale=1.0"
    assert ta_fixed["family_minus_lora"] == pytest.approx(0.8 - 0.65)
    # ties' best is lora with auto weights; its fixed setting (defaults) is osrm's
    assert rows[("ties", "best")]["family_minus_lora"] == pytest.approx(0.85 - 1.0)
    assert rows[("ties", "fixed")]["family_minus_lora"] == pytest.approx(0.85 - 0.75)
    assert (v["wins"], v["losses"], v["compared"]) == (1, 1, 2)
    # one win of two and the best model is lora's: no advice to train OSRM-style
    assert v["advice"].startswith("OSRM-family inits do not reliably merge better")
    assert "1 of 2 methods" in v["advice"] and "one seed" in v["advice"]


def test_advice_follows_a_majority_of_wins():
    wins = {k: v for k, v in OSRM_WINS.items() if "auto" not in k[2]}
    v = verdict([table(wins)])
    assert (v["wins"], v["losses"], v["best"]["init"]) == (2, 0, "osrm")
    assert v["advice"].startswith("Train OSRM-style")
    assert "`task_arithmetic` (scale=0.5) on `osrm`" in v["advice"] and "90.0 %" in v["advice"]


def test_seeds_pool_and_a_win_inside_the_spread_does_not_count():
    one = {("lora", "task_arithmetic", "scale=1.0"): (0.64, 0.4),  # 0.8
           ("osrm", "task_arithmetic", "scale=1.0"): (0.672, 0.42)}  # 0.84  # fmt: skip
    two = {("lora", "task_arithmetic", "scale=1.0"): (0.72, 0.45),  # 0.9
           ("osrm", "task_arithmetic", "scale=1.0"): (0.704, 0.44)}  # 0.88  # fmt: skip
    v = verdict([table(one), table(two)])
    cells = v["rows"][0]["cells"]
    assert cells["lora"].score.mean == pytest.approx(0.85)
    assert cells["lora"].score.spread == pytest.approx(0.05) and cells["lora"].score.n == 2
    assert cells["osrm"].score.mean == pytest.approx(0.86)
    assert cells["osrm"].score.spread == pytest.approx(0.02)
    assert (v["wins"], v["losses"]) == (0, 0)  # +1 point, spreads 7 points
    assert "0.860 ± 0.020" in "\n".join(markdown(v))


def test_a_setting_missing_from_a_seed_and_budget_rows_are_left_out():
    first = table({**OSRM_WINS, ("osrm", "regmean", "alpha=0.9"): (0.8, 0.5)})
    budget = table({("osrm", "dare_ties", "density=0.5"): (0.8, 0.5)}, step=100)
    scores = pooled([first + budget, table(OSRM_WINS)])
    assert ("osrm", "regmean", "alpha=0.9") not in scores  # only in the first run
    assert not any(k[1] == "dare_ties" for k in scores)  # a budget's merge, not the final
    assert verdict([budget]) is None  # nothing final merged: no verdict


def test_rendering_marks_the_best_cell_of_each_row():
    v = verdict([table(OSRM_WINS)])
    md = "\n".join(markdown(v))
    assert (
        "| task_arithmetic | best | 0.775 (scale=0.5) | **0.900 (scale=0.5)** | +12.5 pts |" in md
    )
    assert "**Best merged model:** `ties` (density=0.2,scale=1.0,weights=auto)" in md
    page = html(v)
    assert "<td class=best>0.900 (scale=0.5)</td>" in page and "<td>0.775 (scale=0.5)</td>" in page
    assert html(None) == ""


def _run(root, seed: int, scores: dict, **section) -> object:
    """A run directory by hand: its recorded config (seed ``seed``) and results.jsonl."""
    from osrm.config import dump_config, parse_config
    from osrm.report import append_results

    run = root / f"s{seed}"
    run.mkdir()
    data = {"train": str(root / "x.csv")}  # absolute, as a recorded config holds it
    blocks = [{"name": t, "files": data, "text_fields": ["text"], "label_field": "y",
               "label_names": ["0", "1"]} for t in TASKS]  # fmt: skip
    cfg = parse_config({"run_dir": str(run), "seed": seed, "tasks": blocks, **section})
    (run / "config.yaml").write_text(dump_config(cfg))
    out = [Result(i, "individual", t, "accuracy", s)
           for i, sc in INDIVIDUAL.items() for t, s in zip(TASKS, sc, strict=True)]  # fmt: skip
    for (init, method, hp), sc in scores.items():
        out += [Result(init, "merged", t, "accuracy", s, method, hp)
                for t, s in zip(TASKS, sc, strict=True)]  # fmt: skip
    append_results(run / "results.jsonl", out)
    return run


def test_osrm_report_pools_the_verdict_over_seed_runs(tmp_path, capsys):
    from osrm.cli import main

    one = {("lora", "task_arithmetic", "scale=1.0"): (0.64, 0.4),  # 0.8
           ("osrm", "task_arithmetic", "scale=1.0"): (0.672, 0.42)}  # 0.84  # fmt: skip
    two = {("lora", "task_arithmetic", "scale=1.0"): (0.72, 0.45),  # 0.9
           ("osrm", "task_arithmetic", "scale=1.0"): (0.704, 0.44)}  # 0.88  # fmt: skip
    s0, s1 = _run(tmp_path, 0, one), _run(tmp_path, 1, two)
    assert main(["-q", "report", str(s0), "--seeds", str(s1)]) == 0
    md = (s0 / "results.md").read_text()
    assert "mean ± spread over 2 seeds" in md and "**0.860 ± 0.020 (scale=1.0)**" in md
    assert "0.850 ± 0.050 (scale=1.0)" in md  # lora
    assert main(["-q", "report", str(s0)]) == 0  # alone: seed 0's numbers, no spread
    assert "0.840 (scale=1.0)" in (s0 / "results.md").read_text()
    other = _run(tmp_path, 2, two, lora={"rank": 4})
    same = _run(tmp_path, 3, two)
    (same / "config.yaml").write_text(
        (same / "config.yaml").read_text().replace("seed: 3", "seed: 1")
    )
    before = (s0 / "results.md").read_text()
    for seeds, message in (([other], "differs from"), ([s0], "seed 0 is there twice"),
                           ([s1, same], "seed 1 is there twice")):  # fmt: skip
        assert main(["report", str(s0), "--seeds", *map(str, seeds)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert (s0 / "results.md").read_text() == before  # nothing written on bad input
