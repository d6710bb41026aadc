"""The report of a real run (the text demo at small k) and a comparison of two runs, opened
in headless Chromium: no console error, and every chart present in the rendered DOM as a
drawn SVG. `make test` installs Debian's chromium where it can; elsewhere this is skipped
with the reason."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from browser import chromium, open_page

import tsuika
from tsuika.cli import main
from tsuika.data import tables

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        chromium() is None,
        reason="no Chromium: `apt-get install chromium` (as root) runs the browser test",
    ),
]


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> list[tsuika.Run]:
    output = tmp_path_factory.mktemp("browser-runs")
    settings = dict(model="minilm-l6", output=str(output), progress=False)
    # Every tenth test review: the page is the same, its runs cost less.
    with open(tables.resolve("bundled:reviews", "test"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[::10]
    test = output / "test.csv"
    with open(test, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "label"]] + [[r["text"], r["label"]] for r in rows])
    data = {"train": "bundled:reviews", "test": str(test), "k": 16}
    return [
        tsuika.train(method="transfer", name="transfer", data=data, **settings),
        tsuika.train(
            method="finetune",
            name="finetune",
            data=data,
            finetune={"freeze": 5},
            train={"epochs": 2},
            **settings,
        ),
    ]


def rendered_charts(dom: str) -> dict[str, str]:
    """Each chart figure of the rendered DOM → its first <svg> element's markup."""
    return dict(
        re.findall(r'<figure class="chart" data-chart="([^"]+)">(<svg.*?</svg>)', dom, flags=re.S)
    )


def assert_drawn(svg: str) -> None:
    width, height = (
        float(v)
        for v in re.search(r'<svg[^>]*width="([\d.]+)pt" height="([\d.]+)pt"', svg).groups()
    )
    assert width > 100 and height > 50
    assert svg.count("<path") >= 5  # axes, ticks, lines or bars were drawn


def test_run_report_renders_in_chromium(demo_runs, tmp_path: Path):
    page = demo_runs[1].path / "report.html"
    dom, console = open_page(page, tmp_path / "profile", tmp_path / "report.png")
    assert console == []
    charts = rendered_charts(dom)
    assert set(charts) == {"baselines", "curves", "schedule", "confusion-label"}
    for svg in charts.values():
        assert_drawn(svg)
    for title in ("Verdicts", "Against the baselines", "Most confidently wrong", "Time and memory"):
        assert title in dom
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_compare_report_renders_in_chromium(demo_runs, tmp_path: Path):
    out = tmp_path / "compare.html"
    assert main(["compare", *(str(run.path) for run in demo_runs), "--out", str(out)]) == 0
    dom, console = open_page(out, tmp_path / "profile")
    assert console == []
    charts = rendered_charts(dom)
    assert set(charts) == {"runs", "curves"}
    for svg in charts.values():
        assert_drawn(svg)
    assert "share their test set" in dom
