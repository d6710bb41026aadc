"""The report builder and `tsuika compare` on run folders written by hand (every file the
report reads, with known contents): every section is there, every chart is an inline SVG,
nothing points outside the file, and data is escaped."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tsuika.cli import main
from tsuika.report import build_report, read_run, write_report
from tsuika.tasks import Classify, Regression

EVIL = "<script>alert('x')</script> & <b>bold</b>"


def history(epochs: int, metric: str) -> list[dict[str, Any]]:
    rows = []
    for epoch in range(1, epochs + 1):
        rows.append(
            {
                "phase": "finetune",
                "epoch": epoch,
                "step": 4 * epoch,
                "train_loss": 1 / epoch,
                "val_loss": 0.5 + 0.05 * abs(epoch - 3),
                f"train_{metric}": 0.6 + 0.05 * epoch,
                f"val_{metric}": 0.7 - 0.01 * abs(epoch - 3),
                "lr": 1e-3,
            }
        )
    return rows


def write_run(
    folder: Path,
    task: Classify | Regression,
    records: list[dict],
    score: float = 0.8,
    epochs: int = 6,
    **summary_changes: Any,
) -> Path:
    """A finished run folder with a summary, metrics, predictions and model/meta.json."""
    metric = task.selection
    (folder / "model").mkdir(parents=True)
    meta = {
        "format": 2,
        "base": "tiny",
        "model": {"source": "tiny", "head": {}},
        "task": task.to_meta(),
        "method": "finetune",
    }
    (folder / "model" / "meta.json").write_text(json.dumps(meta))
    gain = {"gain": 0.05, "low": -0.01, "high": 0.1}
    summary = {
        "run": str(folder),
        "model": "tiny",
        "task": task.name,
        "method": "finetune",
        "model_kind": "text-encoder",
        "data": {"train": 40, "validation": 10, "test": len(records)},
        "parameters": {
            "total": 1000,
            "trained": 250,
            "groups": [
                {"name": "embeddings", "parameters": 500, "trained": False, "lr": None},
                {"name": "block1", "parameters": 250, "trained": True, "lr": 3e-5},
                {"name": "head", "parameters": 250, "trained": True, "lr": 3e-3},
            ],
        },
        "selection": {"metric": metric, "higher_is_better": task.higher_is_better},
        "test": {metric: score, **({"macro_f1": score} if metric == "accuracy" else {})},
        "training": {
            "epochs_run": epochs,
            "best_epoch": 3,
            "stopped_early": True,
            "optimizer_steps": 4 * epochs,
            "schedule": {
                "kind": "cosine",
                "total_steps": 40,
                "warmup_steps": 2,
                "rates": {"block1": 3e-5, "head": 3e-3},
            },
        },
        "baselines": {
            "majority": {
                "title": "majority class",
                "pretrained": False,
                "seconds": 0.0,
                metric: 0.5,
                "gain": {"gain": 0.3, "low": 0.2, "high": 0.4},
            },
            "probe": {
                "title": "linear probe",
                "pretrained": True,
                "seconds": 0.4,
                metric: score + 0.02,
                "gain": {"gain": -0.02, "low": -0.05, "high": 0.01},
            },
        },
        "gain": {"baseline": "probe", "metric": metric, **gain},
        "verdicts": {
            "overfitting": {"text": "validation peaked at epoch 3 of 6"},
            "transfer": {"text": "NEGATIVE TRANSFER: finetune is −2.0 accuracy points"},
        },
        "timings": {"cache": 1.0, "fit": 5.0, "test": 0.5, "baselines": 0.4, "total": 7.5},
        "memory": {"peak_rss_mb": 812.0},
    }
    summary.update(summary_changes)
    (folder / "summary.json").write_text(json.dumps(summary))
    lines = [*history(epochs, metric), {**history(1, metric)[0], "phase": "scratch"}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def class_records(n: int = 30, seed: int = 0, texts: list[str] | None = None) -> list[dict]:
    rng = np.random.default_rng(seed)
    labels = ["cat", "dog", "bird"]
    records = []
    for i in range(n):
        truth, guess = labels[i % 3], labels[int(rng.integers(0, 3))]
        records.append(
            {
                "index": i,
                "input": (texts or [f"text {i}"])[i % len(texts or [1])],
                "truth": truth,
                "predicted": guess,
                "score": float(truth == guess),
                "loss": float(rng.random() * 3),
                "confidence": float(rng.random()),
                "tokens": int(5 + i),
                "baselines": {"majority": "cat"},
            }
        )
    return records


def classify_task() -> Classify:
    return Classify(["label"], {"label": ["bird", "cat", "dog"]})


def charts_in(html: str) -> list[str]:
    return re.findall(r'<figure class="chart" data-chart="([^"]+)"><svg', html)


def test_the_report_has_every_section_and_every_chart_inline(tmp_path: Path):
    run = write_run(tmp_path / "run", classify_task(), class_records(texts=[EVIL, "fine"]))
    html = write_report(run).read_text(encoding="utf-8")
    for anchor in (
        "verdicts",
        "baselines",
        "curves",
        "schedule",
        "trained",
        "classes",
        "examples",
        "cost",
    ):
        assert f'<section id="{anchor}">' in html
    assert charts_in(html) == ["baselines", "curves", "schedule", "confusion-label"]
    assert html.count("<figure") == 4  # every figure is an SVG chart
    assert "per-class" not in html and "precision" in html and "recall" in html
    assert '<p class="verdict bad">NEGATIVE TRANSFER' in html
    assert "Most confidently wrong" in html and "Slowest (most tokens)" in html
    assert "812 MB" in html


def test_the_report_names_no_external_address_and_escapes_data(tmp_path: Path):
    run = write_run(tmp_path / "run", classify_task(), class_records(texts=[EVIL]))
    html = write_report(run).read_text(encoding="utf-8")
    assert (
        "http://" not in html
        and "https://" not in html
        and "//" not in html.replace("<!DOCTYPE", "")
    )
    assert "<script" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold" in html
    assert not re.search(r'\b(src|href)="(?!#|data:)', html)  # only in-page links and data URIs


def test_rebuilding_gives_the_same_page(tmp_path: Path, capsys):
    run = write_run(tmp_path / "run", classify_task(), class_records())
    first = write_report(run).read_bytes()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").read_bytes() == first
    assert str(run / "report.html") in capsys.readouterr().out


def test_most_confidently_wrong_are_the_wrong_ones_with_the_highest_loss(tmp_path: Path):
    records = class_records(60)
    run = read_run(write_run(tmp_path / "run", classify_task(), records))
    html = build_report(run)
    table = html.split("Most confidently wrong")[1].split("Slowest")[0]
    shown = [int(i) for i in re.findall(r'<tr><td class="num">(\d+)</td>', table)]
    wrong = sorted((r for r in records if r["score"] < 1), key=lambda r: -r["loss"])
    assert shown == [r["index"] for r in wrong[:10]]


def test_regression_report_draws_predicted_against_true(tmp_path: Path):
    rng = np.random.default_rng(0)
    records = [
        {
            "index": i,
            "input": f"house {i}",
            "truth": float(v),
            "predicted": float(v + e),
            "score": float(e * e),
            "loss": float(e * e),
            "tokens": 4,
            "baselines": {},
        }
        for i, (v, e) in enumerate(zip(rng.normal(size=20), rng.normal(size=20) / 5, strict=True))
    ]
    task = Regression("price", mean=0.0, std=1.0)
    run = write_run(tmp_path / "run", task, records, score=0.3)
    html = write_report(run).read_text(encoding="utf-8")
    assert "predicted-vs-true" in charts_in(html)
    assert "Largest errors" in html and "confidence" not in html


def test_multitask_report_has_a_confusion_matrix_per_column(tmp_path: Path):
    task = Classify(["kind", "size"], {"kind": ["a", "b"], "size": ["big", "small"]})
    records = [
        {
            "index": i,
            "input": f"t{i}",
            "truth": {"kind": "a", "size": "big"},
            "predicted": {"kind": "ab"[i % 2], "size": "big"},
            "score": 1.0 - 0.5 * (i % 2),
            "loss": 0.1 * i,
            "tokens": 3,
            "baselines": {},
        }
        for i in range(8)
    ]
    html = write_report(write_run(tmp_path / "run", task, records)).read_text()
    assert [c for c in charts_in(html) if c.startswith("confusion")] == [
        "confusion-kind",
        "confusion-size",
    ]
    assert "kind=a size=big" in html


def test_image_examples_are_shown_as_embedded_thumbnails(tmp_path: Path):
    picture = tmp_path / "shoe.png"
    Image.new("RGB", (30, 20), (200, 10, 10)).save(picture)
    records = class_records(6)
    for record in records:
        record["input"] = str(picture)
        del record["tokens"]
    run = write_run(tmp_path / "run", classify_task(), records, model_kind="image-encoder")
    html = write_report(run).read_text()
    assert '<img class="thumb" alt="shoe.png" src="data:image/png;base64,' in html
    assert "Slowest" not in html  # every image costs the same after resizing
    picture.unlink()  # gone: the name is shown, no broken image
    assert 'class="thumb"' not in build_report(read_run(run))


def test_report_of_an_unfinished_or_missing_run_is_a_clear_error(tmp_path: Path, capsys):
    (tmp_path / "half").mkdir()
    assert main(["report", str(tmp_path / "half")]) == 2
    assert "has no summary.json" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err


# -- compare -------------------------------------------------------------------------------


def two_runs(tmp_path: Path, second_records: list[dict] | None = None) -> tuple[Path, Path]:
    first = write_run(tmp_path / "a", classify_task(), class_records(40, seed=1), score=0.4)
    second = write_run(
        tmp_path / "b", classify_task(), second_records or class_records(40, 2), score=0.5
    )
    return first, second


def test_compare_writes_one_table_and_page_with_paired_gains(tmp_path: Path, capsys):
    first, second = two_runs(tmp_path)
    out = tmp_path / "compare.html"
    assert main(["compare", str(first), str(second), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "comparison: " in printed and "best" in printed
    html = out.read_text()
    assert charts_in(html) == ["runs", "curves"]
    assert "share their test set" in html
    assert "http" not in html and "<script" not in html
    # b (0.5) is best; a's paired gain over b: the difference of their per-example scores.
    a = np.array([r["score"] for r in class_records(40, seed=1)])
    b = np.array([r["score"] for r in class_records(40, seed=2)])
    assert f"{100 * (a.mean() - b.mean()):+.1f} [" in html


def test_compare_says_when_test_sets_differ(tmp_path: Path):
    other = class_records(40, seed=2)
    other[0]["input"] = "another example"
    first, second = two_runs(tmp_path, other)
    out = tmp_path / "c.html"
    assert main(["compare", str(first), str(second), "--out", str(out)]) == 0
    assert "tested on different examples" in out.read_text()


def test_compare_refuses_mixed_metrics_one_run_and_an_existing_file(tmp_path: Path, capsys):
    first, second = two_runs(tmp_path)
    regression = write_run(tmp_path / "r", Regression("y"), [], score=1.0)
    assert main(["compare", str(first), str(regression)]) == 2
    assert "different metrics" in capsys.readouterr().err
    assert main(["compare", str(first)]) == 2
    assert "two or more run folders" in capsys.readouterr().err
    existing = tmp_path / "taken.html"
    existing.write_text("keep me")
    assert main(["compare", str(first), str(second), "--out", str(existing)]) == 2
    assert existing.read_text() == "keep me"


def test_a_run_without_its_report_gets_it_from_the_report_command(base_config, capsys):
    import tsuika

    run = tsuika.train({**base_config, "report": False})
    assert not (run.path / "report.html").exists()
    assert (run.path / "summary.json").is_file()
    assert main(["report", str(run.path)]) == 0
    assert "<svg" in (run.path / "report.html").read_text(encoding="utf-8")
