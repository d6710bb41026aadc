"""Run folders: created fresh, never overwritten, and self-describing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from helpers import fast_config, folder_bytes, run_folders
from safetensors.torch import load_file

import tsuika
from tsuika.cli import main
from tsuika.errors import TsuikaError
from tsuika.run_folder import create_run_dir


def test_existing_name_is_an_error_and_the_first_run_is_untouched(
    tiny_bert_dir, tiny_csv, tmp_path, capsys
):
    output = tmp_path / "runs"
    first = tsuika.train(fast_config(tiny_bert_dir, tiny_csv, output, name="mine"))
    assert first.path == output / "mine"
    before = folder_bytes(first.path)
    assert "summary.json" in before

    argv = ["train", "--model", str(tiny_bert_dir), "--data", str(tiny_csv), "--name", "mine"]
    argv += [f"output={output}", "progress=false", "baselines.scratch=false", "train.epochs=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "already exists" in err
    assert "Traceback" not in err

    with pytest.raises(TsuikaError, match="already exists"):
        tsuika.train(fast_config(tiny_bert_dir, tiny_csv, output, name="mine"))

    assert folder_bytes(first.path) == before
    assert run_folders(output) == [first.path]


def test_default_names_never_collide(tiny_bert_dir, tiny_csv, tmp_path):
    output = tmp_path / "runs"
    config = fast_config(tiny_bert_dir, tiny_csv, output, train={"epochs": 1})
    first, second = tsuika.train(config), tsuika.train(config)
    assert first.path != second.path
    assert run_folders(output) == sorted([first.path, second.path])
    for run in (first, second):
        assert run.path.name.startswith(f"transfer-{tiny_bert_dir.name}-")
        assert (run.path / "summary.json").is_file()


@pytest.mark.parametrize(
    ("default_name", "stem"),
    [
        ("transfer-torchvision:resnet18", "transfer-torchvision-resnet18"),
        ("finetune-timm:org/vit small", "finetune-timm-org-vit-small"),
        ("transfer-random:bert::tiny", "transfer-random-bert-tiny"),
        ("..transfer-model/", "transfer-model"),
        ("transfer-modèle ★", "transfer-mod-le"),
        (":/ ", "run"),
    ],
)
def test_default_folder_names_hold_only_safe_characters(
    tmp_path: Path, default_name: str, stem: str
) -> None:
    # A colon or a slash from the model's name trips paths, shells, URLs and other systems.
    path = create_run_dir(tmp_path, None, default_name)
    assert path.parent == tmp_path
    assert re.fullmatch(rf"{re.escape(stem)}-\d{{8}}-\d{{6}}", path.name), path.name
    assert re.fullmatch(r"[A-Za-z0-9._-]+", path.name)


def test_a_given_name_is_kept_exactly_and_a_path_in_it_is_refused(tmp_path: Path) -> None:
    assert create_run_dir(tmp_path, "exp:1 b", "default").name == "exp:1 b"
    with pytest.raises(TsuikaError, match=r"`name` .* path separator.*plain folder name"):
        create_run_dir(tmp_path, "../escape", "default")


def test_run_folder_holds_config_metrics_summary_and_model(tiny_run, tiny_bert_dir, tiny_csv):
    path = tiny_run.path
    assert path.name == "tiny"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "model/weights.safetensors"):
        assert (path / name).is_file(), name
    # activation caches and resume checkpoints are removed once the run is complete
    assert not (path / "cache").exists()
    assert not (path / "checkpoints").exists()
    assert not [p for p in path.rglob("*.tmp")]  # atomic writes left nothing behind

    config = yaml.safe_load((path / "config.yaml").read_text())
    assert config["model"] == str(tiny_bert_dir)
    assert config["data"]["train"] == str(tiny_csv)
    assert config["train"]["epochs"] == 5
    assert tsuika.load_config(path / "config.yaml").train.lr == 0.05  # it loads back

    summary = json.loads((path / "summary.json").read_text())
    assert summary == json.loads(json.dumps(tiny_run.summary))
    assert summary["run"] == str(path)
    assert summary["data"] == {
        "train": 28,
        "validation": 4,
        "test": 8,
        "notes": summary["data"]["notes"],
        "skipped_files": 0,
        "skipped": [],
    }


def test_metrics_has_one_line_per_epoch(tiny_run):
    lines = (tiny_run.path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert tiny_run.summary["training"]["epochs_run"] == 5
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    assert {r["phase"] for r in records} == {"transfer"}
    for record in records:
        assert set(record) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"}
        assert record["val_accuracy"] in (0, 0.25, 0.5, 0.75, 1)  # 4 validation examples
        assert record["train_loss"] > 0
    # Measured 2026-11-25 (seed 0): train loss 0.921 → 0.481, validation loss 0.718 → 0.524
    # over the 5 epochs (seeds 1-3 alike): the head learns.
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    training = tiny_run.summary["training"]
    best = records[training["best_epoch"] - 1]
    assert best["val_accuracy"] == training["best_val_accuracy"]
    assert max(r["val_accuracy"] for r in records) == best["val_accuracy"]
    # Measured 2026-11-25: best validation accuracy 1.0 (seeds 0-3); test accuracy 0.875 on
    # the 8 test examples (seeds 1-3: 0.75-0.875); chance is 0.5.
    assert training["best_val_accuracy"] >= 0.75
    assert tiny_run.summary["test"]["accuracy"] >= 0.625


def test_model_folder_records_how_to_rebuild_the_model(tiny_run, tiny_bert_dir):
    meta = json.loads((tiny_run.path / "model" / "meta.json").read_text())
    head_index = len(tiny_run.model.stages) - 1
    assert set(meta) == {"format", "base", "model", "task", "method"}
    assert meta["format"] == 2 and meta["method"] == "transfer"
    assert meta["base"] == str(tiny_bert_dir)
    assert meta["task"] == {
        "name": "classify",
        "labels": {"label": ["neg", "pos"]},
        "weights": {"label": 1.0},
        "selection": "accuracy",
    }
    assert meta["model"]["source"] == str(tiny_bert_dir.resolve())
    # The length the run fitted to its texts (toy texts of 8 tokens: the floor of 128, cut to
    # the 64 positions the tiny BERT has).
    assert meta["model"]["head"]["type"] == "linear" and meta["model"]["max_length"] == 64
    assert "num_labels" not in meta["model"]  # the head's size comes from the task's labels
    assert tiny_run.model.head.net[-1].out_features == 2
    weights = load_file(str(tiny_run.path / "model" / "weights.safetensors"))
    assert {key.split(".")[1] for key in weights} == {str(head_index)}


def test_loading_a_folder_that_is_not_a_run_is_an_error(tmp_path):
    with pytest.raises(TsuikaError, match="not found"):
        tsuika.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TsuikaError, match="not a tsuika run"):
        tsuika.load(tmp_path / "empty")
