"""Issue 30: a head at least as good as a convex probe, imbalance handled by default, verdicts
that fire only beyond noise and name the head when it is the culprit, and a run that reads
its inputs' length and estimates its cost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import csv_text, fast_config, sentiment_rows
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import f1_score

import tsuika
from tsuika.data.splits import Examples
from tsuika.evaluate.metrics import paired_bootstrap
from tsuika.evaluate.verdicts import overfitting_verdict, transfer_verdict
from tsuika.methods.cost import Speed, epochs_within, estimate, measure_speed
from tsuika.tasks.classify import Classify
from tsuika.tasks.linear import macro_f1, solve_logistic, solve_ridge
from tsuika.train import loop


def blobs(n: int, classes: int, seed: int, shift: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes in 12 dimensions, overlapping (so the regularisation matters), on
    uneven scales (so standardisation matters)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.normal(0, shift, (classes, 12))
    x = centres[y] + rng.normal(0, 1, (n, 12))
    return x * np.linspace(0.1, 10, 12), y


# -- the closed-form head ----------------------------------------------------------------------
@pytest.mark.parametrize("classes", [2, 3])
def test_the_solved_head_is_scikit_learns_logistic_regression(classes):
    x, y = blobs(300, classes, seed=classes)
    solved = solve_logistic(x, y, classes, "accuracy", "none", seed=0)
    # The head's scaling: centred, divided by one spread (the root-mean-square of the
    # dimensions' standard deviations).
    mean, std = x.mean(0), np.sqrt(np.mean((x.std(0) + 1e-6) ** 2))
    reference = LogisticRegression(C=solved.details["C"], max_iter=1000).fit((x - mean) / std, y)
    logits = x @ solved.weight.T + solved.bias
    probabilities = torch.tensor(logits).softmax(-1).numpy()
    expected = reference.predict_proba((x - mean) / std)
    # The same optimum up to L-BFGS's tolerance (measured max difference 2e-7).
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    assert solved.details["folds"] == 5 and solved.details["solver"] == "lbfgs"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_regularisation_is_chosen_by_cross_validation_not_fixed(seed):
    # 60 examples, 2 informative dimensions among 1000 of noise: only a strong penalty keeps
    # the noise out (measured, seeds 0-5: C = 0.001-0.03 by the held-out log-loss); 400
    # examples of 10 dimensions that all carry the signal: a weak one (C = 1).
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    x = rng.normal(0, 1, (60, 1000))
    x[:, :2] += 1.0 * y[:, None]
    noisy = solve_logistic(x, y, 2, "accuracy", "none", seed=0)
    y = rng.integers(0, 2, 400)
    x = rng.normal(0, 1, (400, 10)) + 1.0 * y[:, None]
    clean = solve_logistic(x, y, 2, "accuracy", "none", seed=0)
    assert noisy.details["C"] <= 0.03 < 0.3 <= clean.details["C"]
    assert clean.details["cv_accuracy"] >= 0.9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_near_constant_dimensions_stay_quiet(seed):
    """2 informative dimensions among 200 near-constant ones (spread 1e-3, as an image
    backbone's pooled features hold many): one scale for all keeps them quiet, as scikit-learn
    on the raw features does; standardising each dimension makes them as loud as the signal.
    Measured (seeds 0-2): the head 0.705 / 0.675 / 0.780 on 200 held-out rows, scikit-learn
    C=1 raw 0.705 / 0.685 / 0.790, per-dimension standardised 0.555 / 0.610 / 0.560."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 400)
    x = rng.normal(0, 1e-3, (400, 202))
    x[:, :2] = rng.normal(0, 1, (400, 2)) + 0.8 * y[:, None]
    fit, held = slice(0, 200), slice(200, 400)
    solved = solve_logistic(x[fit], y[fit], 2, "accuracy", "none", seed=0)
    ours = ((x[held] @ solved.weight.T + solved.bias).argmax(1) == y[held]).mean()
    raw = LogisticRegression(C=1, max_iter=1000).fit(x[fit], y[fit]).score(x[held], y[held])
    mean, std = x[fit].mean(0), x[fit].std(0)
    per_dimension = (
        LogisticRegression(C=1, max_iter=1000)
        .fit((x[fit] - mean) / std, y[fit])
        .score((x[held] - mean) / std, y[held])
    )
    assert ours >= raw - 0.03
    assert ours >= per_dimension + 0.04


def test_the_solved_regression_head_is_scikit_learns_ridge():
    x, _ = blobs(200, 2, seed=4)
    target = x @ np.linspace(-1, 1, 12) + np.random.default_rng(0).normal(0, 1, 200)
    solved = solve_ridge(x, target[:, None])
    mean, std = x.mean(0), x.std(0) + 1e-6
    reference = Ridge(alpha=solved.details["alpha"]).fit((x - mean) / std, target)
    predicted = (x @ solved.weight.T + solved.bias)[:, 0]
    np.testing.assert_allclose(predicted, reference.predict((x - mean) / std), atol=1e-6)


def test_weights_raise_the_rare_class_recall():
    x, y = blobs(800, 2, seed=7, shift=0.6)
    rare = np.flatnonzero(y == 1)[:60]
    keep = np.concatenate([np.flatnonzero(y == 0), rare])
    x, y = x[keep], y[keep]
    plain = solve_logistic(x, y, 2, "macro_f1", "none", seed=0)
    weighed = solve_logistic(x, y, 2, "macro_f1", "weights", seed=0)

    def recall(solved) -> float:
        predicted = (x @ solved.weight.T + solved.bias).argmax(1)
        return float((predicted[y == 1] == 1).mean())

    assert recall(weighed) > recall(plain)
    assert weighed.details["imbalance"] == "weights"


def _write(path: Path, rows) -> Path:
    path.write_text(csv_text(rows))
    return path


def test_a_transfer_run_solves_its_head_and_takes_no_step(tiny_bert_dir, tiny_csv, tmp_path):
    config = fast_config(tiny_bert_dir, tiny_csv, tmp_path, head={"fit": "convex"})
    run = tsuika.train(config)
    assert run.summary["head_fit"]["kind"] == "convex"
    assert run.summary["training"]["optimizer_steps"] == 0
    assert run.summary["training"]["epochs_run"] == 1
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1
    # The tiny BERT's features of the toy data: measured 0.875 on its 8 test examples.
    assert run.summary["test"]["accuracy"] >= 0.75
    # The probe is the run itself: it is not run again as a baseline.
    assert "probe" not in run.summary["baselines"]
    inputs = ["a superb and wonderful film", "an awful boring plot"]
    loaded = tsuika.load(run.path)
    assert torch.equal(loaded.outputs(inputs)["logits"], run.outputs(inputs)["logits"])


def test_a_solved_run_stopped_in_its_evaluation_resumes_to_the_same_head(
    tiny_bert_dir, tiny_csv, tmp_path, monkeypatch
):
    config = fast_config(tiny_bert_dir, tiny_csv, tmp_path / "a", head={"fit": "convex"})
    whole = tsuika.train(config)
    real = loop.evaluated

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "evaluated", interrupted)
    stopped = fast_config(tiny_bert_dir, tiny_csv, tmp_path / "b", head={"fit": "convex"})
    with pytest.raises(KeyboardInterrupt):
        tsuika.train({**stopped, "name": "r"})
    monkeypatch.setattr(loop, "evaluated", real)
    resumed = tsuika.train(resume=tmp_path / "b" / "r")
    inputs = ["a superb and wonderful film", "dull and clumsy"]
    assert torch.equal(resumed.outputs(inputs)["logits"], whole.outputs(inputs)["logits"])


# -- imbalance -------------------------------------------------------------------------------
def _task(counts: list[int]) -> tuple[Classify, Examples]:
    labels = [i for i, n in enumerate(counts) for _ in range(n)]
    names = ["positive", "negative", "neutral"][: len(counts)]
    task = Classify(["label"], {"label": names})
    return task, Examples([""] * len(labels), {"label": labels})


def test_imbalance_is_handled_by_default_from_three_to_one():
    task, train = _task([70, 20, 10])
    line = task.handle_imbalance("auto", train)
    assert task.selection == "macro_f1" and task.imbalance == "weights"
    assert "positive 70, negative 20, neutral 10" in line and "7.0:1" in line
    weights = task.class_weights["label"].tolist()
    assert weights == pytest.approx([100 / 210, 100 / 60, 100 / 30])
    assert task.gain_unit == "macro-F1 points"


@pytest.mark.parametrize(("mode", "counts"), [("auto", [25, 20, 10]), ("none", [70, 20, 10])])
def test_balanced_data_or_balance_none_changes_nothing(mode, counts):
    task, train = _task(counts)
    assert task.handle_imbalance(mode, train) is None
    assert task.selection == "accuracy" and not task.class_weights


def test_macro_f1_from_summed_counts_is_scikit_learns():
    rng = np.random.default_rng(0)
    task, _ = _task([1, 1, 1])
    truth = torch.tensor(rng.integers(0, 3, 90))
    logits = torch.tensor(rng.normal(size=(90, 3)))
    halves = [
        task.sums({"logits": logits[s]}, {"label": truth[s]}) for s in (slice(0, 45), slice(45, 90))
    ]
    totals = {k: halves[0][k] + halves[1].get(k, 0.0) for k in halves[0]}
    metrics = task.summarize(totals)
    expected = f1_score(truth, logits.argmax(-1), average="macro")
    assert metrics["macro_f1"] == pytest.approx(expected)
    assert macro_f1(truth.numpy(), logits.argmax(-1).numpy(), 3) == pytest.approx(expected)
    assert metrics["loss_se"] > 0


def test_the_bootstrap_of_macro_f1_resamples_examples():
    task, train = _task([70, 20, 10])
    task.handle_imbalance("auto", train)
    rng = np.random.default_rng(1)
    truth = {"label": rng.integers(0, 3, 300)}
    good = {"label": np.where(rng.random(300) < 0.8, truth["label"], 0)}
    majority = {"label": np.zeros(300, dtype=int)}
    gain = paired_bootstrap(
        task.selection_statistics(truth, good),
        task.selection_statistics(truth, majority),
        task.from_mean,
        samples=300,
    )
    expected = f1_score(truth["label"], good["label"], average="macro") - f1_score(
        truth["label"], majority["label"], average="macro", zero_division=0
    )
    assert gain["gain"] == pytest.approx(expected)
    assert 0 < gain["low"] < gain["gain"] < gain["high"]


def test_an_imbalanced_run_selects_on_macro_f1_and_says_so(tiny_bert_dir, tmp_path, capsys):
    rows = sentiment_rows(64, seed=3)
    rare = [r for r in rows if r[1] == "neg"][:6]
    train = _write(tmp_path / "train.csv", [r for r in rows if r[1] == "pos"] + rare)
    config = fast_config(tiny_bert_dir, train, tmp_path / "runs", head={"fit": "convex"})
    run = tsuika.train({**config, "data": {"train": str(train), "val_fraction": 0.2}})
    assert run.summary["selection"]["metric"] == "macro_f1"
    # 32 : 6 in the file; the training split keeps 21 : 4 (5.2:1).
    assert "imbalanced classes (pos 21, neg 4; 5.2:1)" in run.summary["imbalance"]
    assert "macro_f1" in run.summary["test"] and "accuracy" in run.summary["test"]
    assert tsuika.load(run.path).task.selection == "macro_f1"


# -- verdicts --------------------------------------------------------------------------------
def test_a_head_beaten_by_the_probe_on_the_same_features_is_named_underfit():
    task, _ = _task([1, 1])
    versus_tfidf = {"gain": -0.10, "low": -0.15, "high": -0.05}
    versus_probe = {"gain": -0.12, "low": -0.18, "high": -0.06}
    verdict = transfer_verdict(
        versus_tfidf, "transfer", task, "TF-IDF", False, head_only=True, over_probe=versus_probe
    )
    assert verdict["text"].startswith("HEAD UNDERFIT") and not verdict["negative_transfer"]
    # A method that changes the pretrained weights, beaten by the probe: negative transfer.
    finetuned = transfer_verdict(
        versus_probe, "finetune", task, "probe", True, head_only=False, over_probe=versus_probe
    )
    assert finetuned["negative_transfer"] and "keeping them frozen" in finetuned["text"]


def _history(val_losses: list[float], se: float) -> list[dict]:
    return [
        {
            "train_loss": 1.0 - 0.1 * i,
            "val_loss": loss,
            "val_loss_se": se,
            "train_accuracy": 0.9,
            "val_accuracy": 0.8 if i == 0 else 0.79,
        }
        for i, loss in enumerate(val_losses)
    ]


def test_overfitting_is_called_only_beyond_the_validation_losss_noise():
    task, _ = _task([1, 1])
    # The case: 0.128 → 0.130 over ten epochs, standard error 0.01.
    within = _history([0.128] + [0.129] * 9 + [0.130], se=0.01)
    assert overfitting_verdict(within, 1, task)["overfitting"] is False
    beyond = _history([0.128] + [0.140] * 9 + [0.160], se=0.01)
    assert overfitting_verdict(beyond, 1, task)["overfitting"] is True


# -- length and cost -------------------------------------------------------------------------
def test_the_input_length_follows_the_training_texts(tiny_bert_dir, tmp_path):
    from helpers import classifier

    from tsuika.models.text import fitted_length

    words = [text for text, _ in sentiment_rows(40)]  # 6 words each: 8 tokens
    model = classifier(str(tiny_bert_dir), 2)
    model.spec["longest_input"] = 512  # as a model that reads 512 tokens
    # One text in ten is 50 × 6 words (302 tokens): the 95th percentile, rounded up to 304.
    long = [" ".join([w] * (50 if i % 10 == 0 else 1)) for i, w in enumerate(words)]
    assert fitted_length(model, long)[0] == 304 == model.preprocess.max_length
    # Short texts are read up to the floor (a limit costs only the texts longer than it).
    length, note = fitted_length(model, words)
    assert length == 128 and "up to 128 tokens" in note and "cut" not in note
    # One text in ten is cut when it is longer than the 95th percentile.
    rarer = [" ".join([w] * (50 if i % 20 == 0 else 1)) for i, w in enumerate(words)]
    assert fitted_length(model, rarer)[1].endswith("2 of 40 training texts are cut")


def test_a_run_fits_its_input_length_within_the_models_maximum(tiny_bert_dir, tmp_path):
    rows = [(" ".join([text] * 6), label) for text, label in sentiment_rows(40)]
    train = _write(tmp_path / "long.csv", rows)
    run = tsuika.train(fast_config(tiny_bert_dir, train, tmp_path / "runs"))
    # 38-token texts; the floor of 128 is more than the tiny BERT reads (64).
    assert "up to 64 tokens" in run.summary["input_length"]
    assert run.model.spec["max_length"] == 64


def test_the_estimate_scales_with_epochs_and_the_budget_cuts_them():
    from tsuika.config import build_config
    from tsuika.data.splits import Splits

    split = Examples(["x"] * 100, {"label": [0] * 100})
    splits = Splits(split, split.subset(list(range(10))), split.subset(list(range(20))))
    config = build_config({"train": {"epochs": 8}})
    trains, frozen = Speed(forward=0.01, step=0.03), Speed(forward=0.01)
    body = estimate(config, splits, trains, 100)
    head = estimate(config, splits, frozen, 100)
    # 130 inputs once; 8 × (100 training steps + 10 validation passes); 20 test passes.
    assert body.seconds == pytest.approx(0.01 * 130 + 8 * (0.03 * 100 + 0.01 * 10) + 0.01 * 20)
    assert body.trains_body and not head.trains_body
    assert head.seconds == pytest.approx(0.01 * 130)
    assert epochs_within(config, splits, trains, 100, budget=0.01 * 150 + 3 * 3.1) == 3
    assert epochs_within(config, splits, trains, 100, budget=1.0) == 1


def test_a_training_step_is_measured_and_leaves_the_model_as_it_was(tiny_bert_dir):
    from helpers import classifier

    from tsuika.config import build_config
    from tsuika.data.splits import Splits
    from tsuika.feed import gather_outputs, input_feed

    model = classifier(str(tiny_bert_dir), 2)
    texts = [f"{'good ' * (i % 7)}film {i}" for i in range(40)]
    split = Examples(texts, {"label": [i % 2 for i in range(40)]})
    splits = Splits(split, split.subset([0, 1]), split.subset([2, 3]))
    config = build_config({"train": {"batch_size": 8}})
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.train(False)
    speed = measure_speed(model, splits, config, trains_from=1)
    assert speed.forward > 0 and speed.step > 0
    assert measure_speed(model, splits, config, trains_from=None).step == 0.0
    assert not model.training  # the mode it was in
    state = torch.random.get_rng_state()
    measure_speed(model, splits, config, trains_from=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # dropout ran on a fork
    for name, parameter in model.named_parameters():
        assert parameter.grad is None, name
        torch.testing.assert_close(parameter.detach(), before[name], rtol=0, atol=0)
    pooled = gather_outputs(model, input_feed(model, texts[:4]), stop=model.num_stages - 1)
    assert pooled["features"].shape[0] == 4  # still a working model
