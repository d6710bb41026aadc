"""Multi-task classification and regression on synthetic data with a planted answer: a target
a linear head can fit exactly is fitted, a target that is pure noise stays at chance, and the
verdicts are judged against each task's own baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import PLANTED, colour_table, register_tiny_models, text_table

import tsuika
from tsuika.cli import main
from tsuika.errors import TsuikaError


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    register_tiny_models()
    return colour_table(tmp_path_factory.mktemp("colours") / "data", n=240)


def _config(table: Path, output: Path, **overrides) -> dict:
    config = {
        "model": PLANTED,
        "method": "transfer",
        "data": {"train": str(table)},
        "train": {"epochs": 60, "batch_size": 16, "lr": 0.05, "patience": None},
        "baselines": {"scratch": False, "bootstrap": 200},
        "output": str(output),
        "progress": False,
    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def test_regression_fits_a_planted_linear_target(colours: Path, tmp_path: Path) -> None:
    run = tsuika.train(
        _config(colours, tmp_path, task="regression", data={"label_column": "score"})
    )
    summary = run.summary
    assert summary["task"] == "regression"
    # Measured 2026-11-25: R² 0.99999985, RMSE 0.00026 (targets span −0.5…2.5); the
    # training mean: R² −0.002, RMSE 0.67.
    assert summary["test"]["r2"] > 0.99
    assert summary["test"]["rmse"] < 0.05
    mean = summary["baselines"]["mean"]
    assert mean["r2"] < 0.05  # the training mean explains (almost) nothing of the test set
    assert mean["gain"]["low"] > 0
    # The target is linear in the channel means, so ridge regression on pixels fits it too:
    # the verdict is judged against whichever of the two did better.
    ridge = summary["baselines"]["classical"]
    assert ridge["r2"] > 0.9
    best = "classical" if ridge["rmse"] < mean["rmse"] else "mean"
    assert summary["gain"]["baseline"] == best
    # Solved in closed form (ridge, α by leave-one-out): validation went back to training,
    # and the epoch's record holds the task's training metrics.
    assert summary["data"]["validation"] == 0
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    assert '"train_rmse"' in lines[0] and '"train_r2"' in lines[0]

    predicted = tsuika.load(run.path).predict([str(colours.parent / "0.png")])
    truth = float(colours.read_text().splitlines()[1].split(",")[-1])
    assert predicted == pytest.approx([truth], abs=0.05)


def test_multitask_fits_the_real_head_and_leaves_the_noise_head_at_chance(
    colours: Path, tmp_path: Path
) -> None:
    run = tsuika.train(_config(colours, tmp_path, data={"label_column": ["label", "noise"]}))
    test = run.summary["test"]
    assert run.summary["task"] == "multi-task"
    # Measured 2026-11-25: label 0.979, noise 0.542 (test n=48; chance 0.5 ± 0.14 at 2σ).
    assert test["accuracy/label"] > 0.9
    assert 0.3 < test["accuracy/noise"] < 0.7
    assert test["accuracy"] == pytest.approx((test["accuracy/label"] + test["accuracy/noise"]) / 2)
    majority = run.summary["baselines"]["majority"]
    assert set(majority) >= {"label", "noise", "accuracy/label", "accuracy/noise"}

    loaded = tsuika.load(run.path)
    (first,) = loaded.predict([str(colours.parent / "0.png")])
    assert set(first) == {"label", "noise"} and first["label"] in ("redder", "greener")


def test_multitask_weights_scale_each_head_loss(colours: Path, tmp_path: Path) -> None:
    task = tsuika.tasks.Classify(["label", "noise"], weights={"noise": 0.0})
    assert task.weights == {"label": 1.0, "noise": 0.0}
    with pytest.raises(TsuikaError, match="`nosie`, which is not a label column"):
        tsuika.tasks.Classify(["label", "noise"], weights={"nosie": 1.0})


def test_regression_on_text_through_the_cli(
    tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    table = text_table(tmp_path / "scores.csv", n=60)
    args = [
        "train",
        f"model={tiny_bert_dir}",
        f"data.train={table}",
        "task=regression",
        "data.label_column=score",
        "train.epochs=3",
        f"output={tmp_path / 'runs'}",
        "name=r",
        "progress=false",
        "baselines.scratch=false",
    ]
    assert main(args) == 0
    shown = capsys.readouterr().out
    assert "RMSE" in shown and "R²" in shown and "training mean" in shown
    assert main(["predict", str(tmp_path / "runs" / "r"), "a great film"]) == 0
    value = capsys.readouterr().out.split("\t")[0]
    assert np.isfinite(float(value))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"task": "regression", "data": {"label_column": "label"}}, "`pos` in column `label`"),
        ({"task": "multi-task"}, "multi-task needs several label columns"),
        ({"task": "regression", "data": {"label_column": "score", "k": 4}}, "no classes"),
        ({"task": "translate"}, "unknown task `translate`"),
        ({"method": "qlora"}, "unknown method `qlora`"),
    ],
)
def test_task_mistakes_are_clear_errors(
    tiny_bert_dir: Path, tmp_path: Path, overrides: dict, message: str
) -> None:
    table = text_table(tmp_path / "scores.csv")
    config = _config(table, tmp_path / "runs", model=str(tiny_bert_dir), **overrides)
    with pytest.raises(TsuikaError, match=message):
        tsuika.train(config)
    assert not (tmp_path / "runs").exists()


def test_a_constant_regression_target_is_refused(tiny_bert_dir: Path, tmp_path: Path) -> None:
    table = tmp_path / "flat.csv"
    table.write_text("text,score\n" + "".join(f"good film {i},3\n" for i in range(20)))
    config = _config(table, tmp_path / "runs", model=str(tiny_bert_dir), task="regression")
    config["data"]["label_column"] = "score"
    with pytest.raises(TsuikaError, match="every training target in `score` is 3"):
        tsuika.train(config)
