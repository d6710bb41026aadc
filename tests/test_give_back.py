"""A validation split that nothing selects on goes back to training (issue 30, item 4).

A run keeps the last epoch without early stopping, or solves its head in closed form (its
regularisation cross-validated on training): the held-out examples would only be reported on,
so they train instead — 128 examples of two classes train on 102, not 92."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import csv_text, fast_config, sentiment_rows
from sklearn.linear_model import LogisticRegression

import tsuika
from tsuika.tasks.classify import INVERSE_REGULARISATION
from tsuika.tasks.linear import fit_on_validation
from tsuika.train import loop


def _data(run: tsuika.Run) -> dict:
    return json.loads((run.path / "summary.json").read_text())


def test_a_closed_form_head_trains_on_the_validation_split_too(
    tiny_bert_dir, tiny_csv, tmp_path
) -> None:
    config = fast_config(tiny_bert_dir, tiny_csv, tmp_path, head={"fit": "convex"})
    run = tsuika.train(config, report=True)  # its charts drawn without validation
    summary = _data(run)
    held = _data(tsuika.train(config, data={"train": str(tiny_csv), "give_back": False}))["data"]
    assert summary["data"]["validation"] == 0
    assert summary["data"]["train"] == held["train"] + held["validation"]
    assert any("went back to training" in note for note in summary["data"]["notes"])
    assert "closed form" in summary["data"]["notes"][-1]
    assert "not judged" in summary["verdicts"]["overfitting"]["text"]
    assert summary["training"]["best_epoch"] == 1
    # The TF-IDF baseline had the same examples, its C cross-validated on them.
    assert "C" in summary["baselines"]["classical"]
    assert (run.path / "report.html").is_file()


def test_the_last_epoch_kept_without_early_stopping_gives_validation_back(
    tiny_bert_dir, tiny_csv, tmp_path
) -> None:
    config = fast_config(tiny_bert_dir, tiny_csv, tmp_path, train={"epochs": 2, "select": "last"})
    run = tsuika.train(config)
    summary = _data(run)
    assert summary["data"]["validation"] == 0
    assert "the last epoch is kept" in summary["data"]["notes"][-1]
    records = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "epoch" in r and "train_loss" in r]
    assert len(epochs) == 2 and not any(k.startswith("val_") for r in epochs for k in r)
    assert summary["training"]["best_epoch"] == 2


@pytest.mark.parametrize(
    "change",
    [
        {"train": {"select": "best"}},  # the best epoch is chosen on validation
        {"train": {"select": "last", "patience": 2}},  # early stopping watches validation
        {"data": {"give_back": False}},
        {"data": {"k": 8}},  # a few-shot experiment: k per class, whatever validation holds
    ],
)
def test_validation_stays_when_something_selects_on_it_or_it_is_asked_for(
    tiny_bert_dir, tiny_csv, tmp_path, change
) -> None:
    config = fast_config(tiny_bert_dir, tiny_csv, tmp_path, train={"epochs": 2, "select": "last"})
    for section, values in change.items():
        config[section] = {**config.get(section, {}), **values}
    summary = _data(tsuika.train(config))
    assert summary["data"]["validation"] > 0


def test_a_validation_file_is_never_given_back(tiny_bert_dir, tiny_csv, tmp_path) -> None:
    config = fast_config(tiny_bert_dir, tiny_csv, tmp_path, head={"fit": "convex"})
    config["data"]["validation"] = str(tiny_csv)
    summary = _data(tsuika.train(config))
    assert summary["data"]["validation"] > 0


def test_resuming_a_given_back_run_splits_the_same(
    tiny_bert_dir, tiny_csv, tmp_path, monkeypatch
) -> None:
    config = fast_config(tiny_bert_dir, tiny_csv, tmp_path / "a", head={"fit": "convex"})
    whole = tsuika.train(config)
    real = loop.evaluated

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "evaluated", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tsuika.train({**config, "output": str(tmp_path / "b"), "name": "r"})
    monkeypatch.setattr(loop, "evaluated", real)
    resumed = tsuika.train(resume=tmp_path / "b" / "r")
    assert _data(resumed)["data"]["train"] == _data(whole)["data"]["train"]
    assert _data(resumed)["data"]["validation"] == 0


def test_without_validation_a_baseline_cross_validates_its_regularisation() -> None:
    """With only training data, C comes from folds of it: on separable classes with many
    noise dimensions the strongest penalty (C = 0.01, first in the list) predicts one class,
    and the folds must move away from it."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    x = rng.normal(size=(120, 20))
    x[np.arange(120), y] += 3.0
    model, strength = fit_on_validation(
        lambda c: LogisticRegression(C=c, max_iter=500),
        INVERSE_REGULARISATION,
        x,
        y,
        x[:0],
        y[:0],
        lambda truth, predicted: float((truth == predicted).mean()),
    )
    assert strength > INVERSE_REGULARISATION[0]
    assert (model.predict(x) == y).mean() > 0.9


def test_128_examples_of_two_classes_train_on_102(tiny_bert_dir, tmp_path) -> None:
    """The figure the docs give: 26 held out for test, and all the other 102 train."""
    table = tmp_path / "128.csv"
    table.write_text(csv_text(sentiment_rows(128)), encoding="utf-8")
    config = fast_config(tiny_bert_dir, table, tmp_path / "runs", head={"fit": "convex"})
    data = _data(tsuika.train(config))["data"]
    assert (data["train"], data["validation"], data["test"]) == (102, 0, 26)
