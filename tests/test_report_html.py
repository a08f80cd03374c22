"""report.html is one self-contained page that headless Chromium renders (checked by screenshot)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from matplotlib import image

from osrm.config import parse_config
from osrm.stages.reporting import report_stage
from test_report import TASKS, results

MATRICES = {"lora": {"a": {"a": 1.0, "b": 0.4}, "b": {"a": 0.3, "b": 1.0}}}


@pytest.fixture
def report(tmp_path):
    cfg = parse_config({"run_dir": str(tmp_path), "tasks": [{"name": t, "files": {"train": "x.csv"},
                        "text_fields": ["text"], "label_field": "y", "label_names": ["0", "1"]}
                        for t in TASKS]})  # fmt: skip
    return report_stage(cfg, tmp_path, results(), MATRICES)


def test_html_is_self_contained(report):
    page = report["paths"]["html"].read_text()
    assert page.count("<img") == 3 and page.count("data:image/png;base64,") == 3
    assert not re.search(r"(src|href)=[\"']?(https?:|//|file:)", page)  # nothing fetched
    assert "<table>" in page and "task_arithmetic" in page and "norm. avg" in page


def test_html_opens_with_the_verdict_and_captions_figures_by_content(report):
    page = report["paths"]["html"].read_text()
    assert page.index("<h2>Verdict</h2>") < page.index("<h2>Scores</h2>")
    assert "keeps <b>87.5 %</b>" in page  # task_arithmetic scale=0.5: (0.6/0.8 + 0.5/0.5) / 2
    assert "<td class=best>0.875</td>" in page  # the best merged norm. avg, highlighted
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert len(captions) == 3 and captions[0].startswith("Task arithmetic: normalised merged")
    assert not any("plot_" in c or ".png" in c for c in captions)
    md = report["paths"]["markdown"].read_text()
    assert md.index("## Verdict") < md.index("## Scores") and "**Advice:**" in md


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("OSRM_REQUIRE_CHROMIUM"):
        pytest.fail("chromium is required here (CI installs the Debian package chromium)")
    return found


def test_chromium_renders_the_report(report, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium)")
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
             "--window-size=1280,2400", f"--screenshot={shot}"]  # fmt: skip
    url = report["paths"]["html"].resolve().as_uri()
    subprocess.run([chromium, *flags, url], check=True, capture_output=True, timeout=120)
    pixels = image.imread(shot)[..., :3]  # (h, w, 3) floats in [0, 1]
    assert pixels.shape[:2] == (2400, 1280)
    dark = (pixels.mean(-1) < 0.5).mean()  # text, table rules and plot lines
    coloured = (pixels.std(-1) > 0.15).mean()  # plot colours (bars, lines, heat map)
    assert dark > 0.002 and coloured > 0.01, (dark, coloured)
