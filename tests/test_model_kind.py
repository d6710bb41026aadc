"""Issue 32, item 6: one word for the kind of model. Tasks and methods declare
`model_kinds` in the one vocabulary of `tsuika.model_kinds`, a model name says which kinds it
can be, a new run records `model_kind` (meta.json and summary.json), and a run written before
(meta.json `model.family`, summary.json `modality`) still loads, predicts, exports and
reports. The old words as identifiers: `tests/test_fitness.py`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_report import class_records, classify_task, write_run

import tsuika
from tsuika.cli import main
from tsuika.config import build_config
from tsuika.errors import TsuikaError
from tsuika.export import export
from tsuika.methods import METHODS
from tsuika.model_kinds import MODEL_KINDS, recorded_model_kind
from tsuika.models import model_kinds_of
from tsuika.report import write_report
from tsuika.tasks import TASKS, model_kind_for

TEXTS = ["a good film", "a bad film", "good", "bad bad"]


def test_every_task_and_method_declares_kinds_of_the_one_vocabulary() -> None:
    for name, part in {**TASKS, **METHODS}.items():
        kinds = getattr(part, "model_kinds", None)
        assert isinstance(kinds, frozenset) and kinds, name
        assert kinds <= set(MODEL_KINDS), name


def test_a_name_says_the_kinds_it_can_be_and_the_task_picks_one(tiny_bert_dir) -> None:
    assert model_kinds_of("efficientnet-lite0") == {"image-encoder"}
    assert model_kinds_of("timm:resnet18") == {"image-encoder"}
    assert model_kinds_of("fashion-diffusion") == {"text-to-image"}
    # A transformers text model is adapted as either, whichever the task adapts.
    assert model_kinds_of(str(tiny_bert_dir)) == {"text-encoder", "causal-lm"}
    kind = {
        task: model_kind_for(build_config({"model": str(tiny_bert_dir), "task": task}))
        for task in ("classify", "regression", "causal-lm")
    }
    assert kind == {
        "classify": "text-encoder",
        "regression": "text-encoder",
        "causal-lm": "causal-lm",
    }


def test_a_model_of_a_kind_the_task_cannot_adapt_is_named_with_both(tmp_path, capsys) -> None:
    argv = ["train", "model=efficientnet-lite0", "task=causal-lm", f"output={tmp_path}", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "task `causal-lm` adapts causal-lm models, and `efficientnet-lite0` is an " in err
    assert "image-encoder model" in err
    assert "Traceback" not in err and not any(tmp_path.iterdir())


def test_a_new_run_records_its_model_kind(tiny_run: tsuika.Run) -> None:
    meta = json.loads((tiny_run.path / "model" / "meta.json").read_text())
    assert meta["model"]["model_kind"] == "text-encoder" and "family" not in meta["model"]
    summary = json.loads((tiny_run.path / "summary.json").read_text())
    assert summary["model_kind"] == "text-encoder" and "modality" not in summary


def _as_before_issue_32(run: Path) -> None:
    """Rewrite a run's files as tsuika wrote them before `model_kind`."""
    meta_path, summary_path = run / "model" / "meta.json", run / "summary.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["family"] = {"text-encoder": "text"}[meta["model"].pop("model_kind")]
    meta_path.write_text(json.dumps(meta))
    summary = json.loads(summary_path.read_text())
    summary["modality"] = {"text-encoder": "text"}[summary.pop("model_kind")]
    summary_path.write_text(json.dumps(summary))


def test_a_run_written_before_still_loads_predicts_and_exports(tiny_run, tmp_path) -> None:
    old = tmp_path / "old-run"
    shutil.copytree(tiny_run.path, old)
    _as_before_issue_32(old)
    loaded = tsuika.load(old)
    assert loaded.model.model_kind == "text-encoder"
    assert loaded.predict(TEXTS) == tiny_run.predict(TEXTS)
    assert (export(old, "hf", tmp_path / "hf") / "export.json").is_file()
    assert main(["predict", str(old), "good film"]) == 0


def test_the_older_words_read_as_model_kinds() -> None:
    assert recorded_model_kind({"family": "text"}) == "text-encoder"
    assert recorded_model_kind({"family": "image"}) == "image-encoder"
    assert recorded_model_kind({"family": "causal-lm"}) == "causal-lm"
    assert recorded_model_kind({"modality": "text-to-image"}) == "text-to-image"
    assert recorded_model_kind({"model_kind": "causal-lm", "family": "text"}) == "causal-lm"
    assert recorded_model_kind({"family": ["text"]}) is None  # an edited file: no kind


def test_an_older_image_run_still_reports_its_pictures(tmp_path) -> None:
    picture = tmp_path / "shoe.png"
    Image.new("RGB", (30, 20), (200, 10, 10)).save(picture)
    records = class_records(6)
    for record in records:
        record["input"] = str(picture)
        del record["tokens"]
    run = write_run(tmp_path / "run", classify_task(), records, modality="image")
    summary = json.loads((run / "summary.json").read_text())
    del summary["model_kind"]  # as before issue 32: `modality` alone
    (run / "summary.json").write_text(json.dumps(summary))
    assert '<img class="thumb"' in write_report(run).read_text()


def test_a_recorded_kind_not_of_the_vocabulary_is_a_damaged_run(tiny_run, tmp_path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(tiny_run.path, copy)
    meta_path = copy / "model" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["model_kind"] = "encoder"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(TsuikaError, match=r"`model.model_kind` is not one of text-encoder, "):
        tsuika.load(copy)
