"""`tsuika compare RUN1 RUN2 …`: several runs on the same task side by side — the usual
question being transfer vs finetune vs lora on the same data. One table (also printed) and
one self-contained HTML page. When the runs share their test set (same inputs, same truth),
each run's gain over the best one comes with a paired bootstrap interval."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from tsuika.errors import TsuikaError
from tsuika.evaluate.metrics import bootstrap_interval, paired_bootstrap
from tsuika.files import write_atomic
from tsuika.report import charts
from tsuika.report.files import RunFiles, read_run
from tsuika.report.html import Section, chart, page, percent, table, text


def read_runs(paths: list[str | Path]) -> list[RunFiles]:
    if len(paths) < 2:
        raise TsuikaError(
            "compare needs two or more run folders, e.g. tsuika compare runs/a runs/b"
        )
    runs = [read_run(p) for p in paths]
    metrics = {r.summary["selection"]["metric"] for r in runs}
    if len(metrics) > 1:
        raise TsuikaError(
            "these runs are judged by different metrics ("
            + ", ".join(f"{r.name}: {r.summary['selection']['metric']}" for r in runs)
            + "); compare runs of the same task"
        )
    return runs


def shared_test_set(runs: list[RunFiles]) -> bool:
    """Whether every run was tested on the same examples, in the same order (then their
    per-example scores can be paired)."""

    def key(run: RunFiles) -> list:
        return [(r["input"], str(r["truth"])) for r in run.records]

    first = key(runs[0])
    return bool(first) and all(key(run) == first for run in runs[1:])


def comparison_rows(runs: list[RunFiles]) -> list[dict[str, Any]]:
    """One row per run: what it is, its test metric with an interval, its verdict's gain,
    what it cost; and with a shared test set, the paired gain over the best run."""
    metric = runs[0].summary["selection"]["metric"]
    task = runs[0].task
    best = max(runs, key=lambda r: r.summary["test"][metric] * (1 if task.higher_is_better else -1))
    paired = shared_test_set(runs)
    rows = []
    for run in runs:
        summary = run.summary
        scores = np.array([r["score"] for r in run.records]) if run.records else None
        interval = bootstrap_interval(scores, task.from_mean) if scores is not None else None
        parameters = summary.get("parameters", {})
        row: dict[str, Any] = {
            "run": run.name,
            "method": summary["method"],
            "model": summary["model"],
            "score": summary["test"][metric],
            "interval": interval,
            "trained_share": parameters.get("trained", 0) / max(parameters.get("total", 1), 1),
            "seconds": summary.get("timings", {}).get("total", 0.0),
            "peak_mb": summary.get("memory", {}).get("peak_rss_mb"),
            "epochs": summary.get("training", {}).get("epochs_run"),
            "gain": summary.get("gain"),
            "verdicts": [v.get("text", "") for v in summary.get("verdicts", {}).values()],
            "best": run is best,
            "metric": metric,
            "metric_title": task.metric_title(metric),
            "versus": "best" if run is best else "—",
        }
        if paired and run is not best:
            best_scores = np.array([r["score"] for r in best.records])
            row["versus_best"] = paired_bootstrap(
                scores, best_scores, task.from_mean, task.higher_is_better
            )
            row["versus"] = task.gain_interval(row["versus_best"])
        rows.append(row)
    return rows


def build_comparison(runs: list[RunFiles], rows: list[dict[str, Any]]) -> str:
    metric = runs[0].summary["selection"]["metric"]
    task = runs[0].task
    name = task.metric_title(metric)
    cells = []
    for row in rows:
        low, high = row["interval"] or (float("nan"), float("nan"))
        cells.append(
            [
                row["run"],
                row["method"],
                row["model"],
                f"{row['score']:.3f}",
                f"[{low:.3f}, {high:.3f}]",
                row["versus"],
                f"{task.gain_interval(row['gain'])} vs {row['gain']['baseline']}"
                if row["gain"]
                else "",
                percent(row["trained_share"]),
                f"{row['seconds']:.1f}",
                f"{row['peak_mb']:.0f}" if row["peak_mb"] else "",
            ]
        )
    headers = [
        "run",
        "method",
        "model",
        f"test {name}",
        "95% CI",
        "vs the best run (paired)",
        "gain over its strongest baseline",
        "trained",
        "seconds",
        "peak MB",
    ]
    numeric = [False, False, False, True, True, True, True, True, True, True]
    svg = charts.runs_compared(
        [r["run"] for r in rows],
        [r["score"] for r in rows],
        [r["interval"] or (r["score"], r["score"]) for r in rows],
        [r["seconds"] for r in rows],
        name,
    )
    note = (
        "<p class='note'>The runs share their test set: gains over the best run are paired "
        "bootstrap 95% intervals.</p>"
        if any("versus_best" in row for row in rows)  # paired only on a shared test set
        else "<p class='note'>The runs were tested on different examples: their scores are not "
        "paired, and differences may come from the test sets.</p>"
    )
    sections = [
        Section("table", "Runs", table(headers, cells, numeric) + note),
        Section("scores", "Scores and cost", chart("runs", svg, f"test {name}; time per run")),
        Section(
            "curves",
            "Validation curves",
            chart("curves", charts.curves_compared({r.name: r.history for r in runs}, metric)),
        ),
        Section(
            "verdicts",
            "Verdicts",
            "".join(
                f"<h3>{text(row['run'])}</h3>"
                + "".join(f'<p class="verdict">{text(v)}</p>' for v in row["verdicts"])
                for row in rows
            ),
        ),
    ]
    return page("tsuika compare", " · ".join(r.name for r in runs), sections)


def write_comparison(paths: list[str | Path], out: str | Path | None = None) -> tuple[Path, list]:
    """Compare runs; the page goes to `out` (never over an existing file) or, by default, to
    a new `compare-<time>.html` beside the first run."""
    runs = read_runs(paths)
    rows = comparison_rows(runs)
    if out is None:
        return write_new_page(runs[0].path.parent, build_comparison(runs, rows)), rows
    out = Path(out)
    if out.exists():
        raise TsuikaError(
            f"{out} already exists; choose another --out (reports are not overwritten)"
        )
    if not out.parent.is_dir():
        raise TsuikaError(f"folder {out.parent} does not exist; create it or choose another --out")
    write_atomic(out, build_comparison(runs, rows))
    return out, rows


def write_new_page(folder: Path, html: str) -> Path:
    """`html` as `compare-<time>.html` in `folder`, or `-2`, `-3`, … after it when pages of
    the same second are there. As for run folders, a name is claimed only if nothing has it:
    the write itself refuses a name taken meanwhile (by a comparison running at the same
    time), and the next one is tried, so a page never replaces another."""
    stem = f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    for attempt in range(1000):
        path = folder / (f"{stem}.html" if attempt == 0 else f"{stem}-{attempt + 1}.html")
        if os.path.lexists(path):
            continue
        try:
            write_atomic(path, html, replace=False)
        except TsuikaError:
            if os.path.lexists(path):  # lost the name to another comparison
                continue
            raise
        return path
    raise TsuikaError(f"could not find a free name for a comparison page in {folder}")
