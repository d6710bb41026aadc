"""`tsuika check`: each check finds what was planted in small synthetic data, and raises no
alarm on clean data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import csv_text

from tsuika.advice.checks import (
    cheap_checks,
    class_balance,
    data_checks,
    domain_shift,
    exact_duplicates,
    input_sizes,
    label_errors,
    near_duplicates,
)
from tsuika.data.splits import Examples, Splits
from tsuika.tasks import Classify
from tsuika.tasks.classify import MultiTask


def examples(texts: list[str], labels: list[str]) -> Examples:
    return Examples(texts, {"label": labels}, "data.csv", list(range(2, len(texts) + 2)))


def clean_splits() -> Splits:
    words = ["apple", "river", "stone", "cloud", "green", "seven", "piano", "lemon"]
    pairs = zip(words * 4, words[::-1] * 4, strict=True)
    texts = [f"{a} {b} {i}" for i, (a, b) in enumerate(pairs)]
    labels = ["a", "b"] * 16
    return Splits(
        examples(texts[:20], labels[:20]),
        examples(texts[20:26], labels[20:26]),
        examples(texts[26:], labels[26:]),
    )


def verdicts(findings) -> dict[str, str]:
    return {f.check: f.verdict for f in findings}


def test_clean_data_raises_no_alarm():
    findings = cheap_checks(clean_splits(), ["label"])
    assert all(f.verdict == "ok" for f in findings), [f.text for f in findings]


def test_imbalance_is_measured_and_named_with_its_fix():
    splits = clean_splits()
    splits.train = examples([f"text {i}" for i in range(16)], ["a"] * 12 + ["b"] * 4)
    (finding,) = class_balance(splits, ["label"])
    assert finding.verdict == "warning" and finding.numbers["ratio"] == 3.0
    assert "train.balance" in finding.fix
    splits.train = examples([f"text {i}" for i in range(10)], ["a"] * 5 + ["b"] * 5)
    assert class_balance(splits, ["label"])[0].verdict == "ok"


def encoded(targets: dict[str, list[int]]) -> Splits:
    """Splits as a classification task holds them: class indices, not label strings."""
    n = len(next(iter(targets.values())))
    train = Examples([f"text {i}" for i in range(n)], targets, "data.csv", list(range(2, n + 2)))
    empty = Examples([], {column: [] for column in targets})
    return Splits(train, empty, empty)


def test_imbalance_names_the_classes_by_label_not_by_index():
    # Labels that look like numbers ("5" is index 2) tell a label from an index apart.
    task = Classify(["stars"], {"stars": ["1", "3", "5"]})
    splits = encoded({"stars": [2] * 12 + [1] * 3 + [0] * 6})
    (finding,) = [f for f in data_checks(splits, task) if f.check == "balance"]
    assert finding.verdict == "warning"
    assert "`5` has 12 training examples, `3` 3" in finding.text, finding.text
    assert "favours `5`" in finding.text
    assert "2 has" not in finding.text and "`2`" not in finding.text
    assert finding.numbers["counts"] == {"1": 6, "3": 3, "5": 12}
    balanced = encoded({"stars": [0, 1, 2] * 4})
    (ok,) = [f for f in data_checks(balanced, task) if f.check == "balance"]
    assert ok.numbers["counts"] == {"1": 4, "3": 4, "5": 4}


def test_multi_task_imbalance_names_the_column_and_its_own_labels():
    labels = {"topic": ["news", "sport"], "mood": ["negative", "neutral", "positive"]}
    task = MultiTask(["topic", "mood"], labels)
    splits = encoded({"topic": [0, 1] * 8, "mood": [2] * 12 + [1] * 4})
    found = [f for f in data_checks(splits, task) if f.check == "balance"]
    assert [f.verdict for f in found] == ["ok", "warning"]
    text = found[1].text
    assert "in `mood`" in text and "`positive` has 12 training examples, `neutral` 4" in text
    assert found[0].numbers["counts"] == {"news": 8, "sport": 8}


def test_a_conflicting_duplicate_shows_its_labels_by_name():
    task = Classify(["label"], {"label": ["negative", "positive"]})
    splits = encoded({"label": [0, 1, 0, 1]})
    splits.train.inputs[1] = splits.train.inputs[0]
    (conflict,) = [f for f in data_checks(splits, task) if f.verdict == "problem"]
    assert {row["label"] for row in conflict.examples[0]} == {"negative", "positive"}


def test_imbalance_fix_says_what_the_default_balance_does():
    splits = encoded({"label": [0] * 12 + [1] * 3})
    (finding,) = class_balance(splits, ["label"])
    assert "`train.balance: auto`" in finding.fix and "`train.balance: sampler`" in finding.fix


def test_empty_and_extreme_texts_and_tiny_images():
    splits = clean_splits()
    splits.train.inputs[3] = "   "
    splits.test.inputs[1] = "word " * 200
    found = {f.check: f for f in input_sizes(splits)}
    assert found["empty"].verdict == "problem" and found["empty"].count == 1
    assert found["empty"].examples[0] == {"split": "train", "line": 5, "label": "b", "input": "   "}
    assert found["length"].count == 1 and found["length"].examples[0]["split"] == "test"
    images = Examples([torch.zeros(3, 8, 8), torch.zeros(3, 32, 32)], {"label": ["a", "b"]})
    empty = Examples([], {"label": []})
    found = {f.check: f for f in input_sizes(Splits(images, empty, empty))}
    assert found["size"].count == 1


def test_a_planted_duplicate_a_conflict_and_a_leak():
    splits = clean_splits()
    splits.train.inputs[5] = splits.train.inputs[7]  # same label ("b")
    splits.train.inputs[2] = splits.train.inputs[1].upper()  # labels "a" and "b"
    splits.test.inputs[0] = "  " + splits.train.inputs[10] + " "  # train → test
    found = {(f.check, f.verdict): f for f in exact_duplicates(splits)}
    assert found[("duplicates", "warning")].count == 1
    assert found[("duplicates", "problem")].count == 1
    leak = found[("leakage", "problem")]
    assert leak.count == 1
    assert {row["split"] for row in leak.examples[0]} == {"train", "test"}
    assert {row["line"] for row in leak.examples[0]} == {12, 2}


def _features(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8)) + shift


def test_near_duplicates_cross_splits_by_cosine_not_by_text():
    splits = clean_splits()
    features = {"train": _features(20, 0), "val": _features(6, 1), "test": _features(6, 2)}
    features["test"][4] = features["train"][9] * 2.0 + 1e-3  # same direction, another text
    found = {(f.check, f.verdict): f for f in near_duplicates(splits, features)}
    leak = found[("leakage", "problem")]
    assert leak.count == 1 and leak.examples[0][0]["cosine"] > 0.999
    assert [row["split"] for row in leak.examples[0]] == ["train", "test"]
    clean = {"train": _features(20, 0), "val": _features(6, 1), "test": _features(6, 2)}
    assert verdicts(near_duplicates(splits, clean)) == {"duplicates": "ok"}


def _separable(n_per_class: int, seed: int = 0) -> tuple[Examples, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[3.0] * 8, [-3.0] * 8])
    labels = ["a", "b"] * n_per_class
    features = np.stack([centres[i % 2] + rng.normal(size=8) for i in range(2 * n_per_class)])
    return examples([f"row {i}" for i in range(len(labels))], labels), features


def test_flipped_labels_are_found_and_clean_labels_are_not():
    train, features = _separable(30)
    assert label_errors(train, features, "label").verdict == "ok"
    train.targets["label"][4] = "b"  # was "a"
    train.targets["label"][11] = "a"  # was "b"
    finding = label_errors(train, features, "label")
    assert finding.verdict == "warning" and finding.count == 2
    assert {row["line"] for row in finding.examples} == {6, 13}
    assert {row["probe_says"] for row in finding.examples} == {"a", "b"}


def test_a_shifted_source_is_detected_and_the_same_distribution_is_not():
    same = domain_shift(_features(200, 0), _features(200, 1))
    assert same.verdict == "ok" and same.numbers["auc_low"] <= 0.5
    shifted = domain_shift(_features(200, 0), _features(200, 1, shift=1.0))
    assert shifted.verdict == "warning" and shifted.numbers["auc"] > 0.8
    assert "strong" in shifted.text


def test_check_command_prints_json_findings(tiny_bert_dir: Path, write_file, capsys):
    from tsuika.cli import main

    rows = [f"good film {i},pos" if i % 2 else f"bad film {i},neg" for i in range(24)]
    train = write_file("train.csv", "text,label\n" + "\n".join(rows) + "\n")
    test = write_file("test.csv", "text,label\ngood film 3,pos\nbad film 100,neg\n")
    code = main(
        [
            "check",
            "--data",
            str(train),
            "--test",
            str(test),
            "--model",
            str(tiny_bert_dir),
            "--json",
        ]
    )
    assert code == 0
    findings = json.loads(capsys.readouterr().out)
    leaks = [f for f in findings if f["check"] == "leakage"]
    assert leaks and leaks[0]["count"] == 1 and leaks[0]["verdict"] == "problem"
    assert {row["label"] for row in leaks[0]["examples"][0]} == {"pos"}  # names, not indices
    assert {f["check"] for f in findings} >= {"balance", "label-errors", "duplicates"}


@pytest.mark.parametrize("argument", ["--data", "--source"])
def test_check_on_a_missing_file_is_a_clear_error(tiny_bert_dir, tmp_path, capsys, argument):
    from tsuika.cli import main

    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood,pos\nbad,neg\n" * 4, encoding="utf-8")
    args = ["check", "--model", str(tiny_bert_dir), "--data", str(train), "train.max_length=32"]
    args += [argument, str(tmp_path / "nope.csv")]
    assert main(args) == 2
    assert "nope.csv" in capsys.readouterr().err


def test_train_warns_of_a_leak_records_it_and_reports_it(
    tiny_bert_dir: Path, tiny_csv: Path, tmp_path: Path, capsys
):
    from helpers import fast_config, sentiment_rows

    import tsuika

    rows = sentiment_rows(40)
    test = tmp_path / "test.csv"
    test.write_text(csv_text([rows[3], *sentiment_rows(12, seed=7)]), encoding="utf-8")
    config = fast_config(tiny_bert_dir, tiny_csv, tmp_path / "runs", report=True)
    config["data"]["test"] = str(test)
    run = tsuika.train(config, train={"epochs": 1})
    assert "data check, leakage" in capsys.readouterr().err
    (leak,) = [f for f in run.summary["checks"] if f["check"] == "leakage"]
    assert leak["count"] == 1 and leak["examples"][0][1]["line"] == 2
    page = (run.path / "report.html").read_text(encoding="utf-8")
    assert "Data checks" in page and "LEAKAGE" not in page.split("Data checks")[0]
    assert "PROBLEM" in page and "test 2" in page


# -- train.balance: the fix the imbalance check names ------------------------------------------
def test_balanced_weights_make_every_class_weigh_the_same_in_the_loss():
    from tsuika.tasks import Classify

    task = Classify(["label"], {"label": ["a", "b"]})
    task.balance(Examples(["x"] * 8, {"label": [0, 0, 0, 0, 0, 0, 1, 1]}))
    torch.testing.assert_close(task.class_weights["label"], torch.tensor([8 / 12, 8 / 4]))
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = {"label": torch.tensor([0, 1, 1])}
    plain = torch.nn.functional.cross_entropy(logits, targets["label"], reduction="none")
    expected = plain * torch.tensor([8 / 12, 2.0, 2.0])
    torch.testing.assert_close(task.losses({"logits": logits}, targets), expected)


def test_a_balanced_sampler_draws_every_class_equally_often_and_reproducibly():
    from tsuika.feed.batches import training_batches
    from tsuika.tasks import Classify

    task = Classify(["label"], {"label": ["a", "b"]})
    labels = torch.tensor([0] * 90 + [1] * 10)
    draw = task.draw_weights({"label": labels})
    drawn = [i for e in range(20) for b in training_batches(100, 16, 0, e, None, draw) for i in b]
    assert len(drawn) == 20 * 100
    share = float(labels[drawn].float().mean())
    assert 0.45 < share < 0.55  # 2,000 draws: the binomial spread is ±0.011
    again = training_batches(100, 16, 0, 3, None, draw)
    assert again == training_batches(100, 16, 0, 3, None, draw)


@pytest.mark.parametrize("balance", ["weights", "sampler"])
def test_train_with_balance_runs_and_refuses_regression(
    tiny_bert_dir: Path, tmp_path: Path, balance
):
    from helpers import fast_config, sentiment_rows

    import tsuika
    from tsuika.errors import TsuikaError

    rows = [r for r in sentiment_rows(60) if r[1] == "pos"][:24] + [
        r for r in sentiment_rows(60) if r[1] == "neg"
    ][:6]
    data = tmp_path / "imbalanced.csv"
    data.write_text(csv_text(rows), encoding="utf-8")
    config = fast_config(tiny_bert_dir, data, tmp_path / "runs", train={"balance": balance})
    run = tsuika.train(config)
    assert 0.0 <= run.summary["test"]["accuracy"] <= 1.0
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("text,label\n" + "".join(f"w{i},{i}.5\n" for i in range(12)))
    with pytest.raises(TsuikaError, match=r"train\.balance applies to classification"):
        tsuika.train(
            fast_config(
                tiny_bert_dir,
                numbers,
                tmp_path / "r2",
                task="regression",
                train={"balance": balance},
            )
        )
