"""Reading data: every bad input is one clear error naming the file (and line), through the
API and the CLI, and leaves no run folder behind; good inputs in every format read alike."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import classify_splits, csv_text, fast_config, jsonl_text, run_folders, sentiment_rows

import tsuika
from tsuika.cli import main
from tsuika.config import DataConfig
from tsuika.data.splits import stratified_split, take_k_per_class
from tsuika.data.tables import read_table, resolve
from tsuika.errors import TsuikaError

GOOD = csv_text(sentiment_rows(12))


@dataclass
class BadInput:
    """A training file (written unless `content` is None) and what the error must say."""

    content: str | bytes | None
    expected: list[str]
    name: str = "train.csv"
    test_file: str | None = None
    """Contents of a separate test file `test.csv`, when the mistake is there."""
    cli_args: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    names_file: bool = True


BAD_INPUTS = {
    "missing file": BadInput(None, ["not found"]),
    "no text column": BadInput(
        "review,label\ngood film,pos\nbad film,neg\n",
        ["no column `text`", "review, label", "set data.text_column=..."],
    ),
    "no label column": BadInput(
        "text,sentiment\ngood film,pos\nbad film,neg\n",
        ["no column `label`", "text, sentiment", "set data.label_column=..."],
    ),
    "empty file": BadInput("", ["is empty"]),
    "whitespace-only file": BadInput("\n  \n", ["is empty"]),
    "header only": BadInput("text,label\n", ["no rows"]),
    "label only in test file": BadInput(
        GOOD,
        ["test.csv line 3", "`neutral`", "neg, pos"],
        test_file="text,label\ngreat film,pos\ndull plot,neutral\n",
        names_file=False,
    ),
    "single class": BadInput(
        "text,label\ngood film,pos\ngreat film,pos\nlovely film,pos\n", ["only one class", "`pos`"]
    ),
    "not UTF-8": BadInput(b"text,label\ngood film,pos\nbad \xff film,neg\n", ["line 3", "UTF-8"]),
    "empty text": BadInput(
        "text,label\ngood film,pos\n   ,neg\nbad film,neg\n", ["line 3", "empty text"]
    ),
    "missing label": BadInput(
        "text,label\ngood film,pos\nbad film,\n", ["line 3", "missing label"]
    ),
    "broken JSONL": BadInput(
        '{"text": "good film", "label": "pos"}\n{"text": oops}\n',
        ["line 2", "not valid JSON"],
        name="train.jsonl",
    ),
    "unknown config key": BadInput(
        GOOD,
        ["unknown key `train.lrr`"],
        cli_args=["train.lrr=0.1"],
        overrides={"train": {"lrr": 0.1}},
        names_file=False,
    ),
    "wrong type": BadInput(
        GOOD,
        ["`train.epochs`", "abc"],
        cli_args=["train.epochs=abc"],
        overrides={"train": {"epochs": "abc"}},
        names_file=False,
    ),
    "unknown model": BadInput(
        GOOD, ["unknown model `no-such-model`"], model="no-such-model", names_file=False
    ),
}


@dataclass
class Prepared:
    train: Path
    test: Path | None
    model: str
    output: Path


def prepare(case: BadInput, folder: Path, tiny_bert_dir: Path) -> Prepared:
    train = folder / case.name
    if case.content is not None:
        data = case.content if isinstance(case.content, bytes) else case.content.encode()
        train.write_bytes(data)
    test = None
    if case.test_file is not None:
        test = folder / "test.csv"
        test.write_text(case.test_file, encoding="utf-8")
    return Prepared(train, test, case.model or str(tiny_bert_dir), folder / "runs")


def check_message(message: str, case: BadInput, prepared: Prepared) -> None:
    if case.names_file:
        assert str(prepared.train) in message
    if prepared.test is not None:
        assert str(prepared.test) in message
    for part in case.expected:
        assert part in message


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_a_tsuika_error_and_writes_no_run(case, tmp_path, tiny_bert_dir):
    prepared = prepare(case, tmp_path, tiny_bert_dir)
    config = fast_config(prepared.model, prepared.train, prepared.output)
    if prepared.test is not None:
        config["data"]["test"] = str(prepared.test)
    for section, values in case.overrides.items():
        config[section] = {**config[section], **values}
    with pytest.raises(TsuikaError, match=re.escape(case.expected[0])) as err:
        tsuika.train(config)
    check_message(str(err.value), case, prepared)
    assert run_folders(prepared.output) == []


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_through_the_cli_exits_2_with_one_line(case, tmp_path, tiny_bert_dir, capsys):
    prepared = prepare(case, tmp_path, tiny_bert_dir)
    argv = ["train", "--model", prepared.model, "--data", str(prepared.train)]
    if prepared.test is not None:
        argv += ["--test", str(prepared.test)]
    argv += [f"output={prepared.output}", "progress=false", "baselines.scratch=false"]
    assert main(argv + case.cli_args) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    check_message(lines[0], case, prepared)
    assert run_folders(prepared.output) == []


def test_bracketed_column_name_is_printed_verbatim(tmp_path, tiny_bert_dir, capsys):
    train = tmp_path / "train.csv"
    train.write_text("text,[/label]\ngood film,pos\n", encoding="utf-8")
    argv = ["train", "--model", str(tiny_bert_dir), "--data", str(train)]
    assert main([*argv, f"output={tmp_path / 'runs'}", "progress=false"]) == 2
    assert "[/label]" in capsys.readouterr().err


def test_multi_line_row_is_reported_where_it_starts(write_file):
    path = write_file("train.csv", 'text,label\n"good\nfilm",\n')
    with pytest.raises(TsuikaError, match="line 2:"):
        read_table(path, "text", ["label"])


# --- good inputs -----------------------------------------------------------------------------

ROWS = sentiment_rows(10)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("data.csv", csv_text(ROWS)),
        ("data.tsv", csv_text(ROWS, sep="\t")),
        ("data.jsonl", jsonl_text(ROWS)),
        ("data.CSV", "\ufeff" + csv_text(ROWS)),  # byte-order mark, upper-case suffix
    ],
)
def test_csv_tsv_and_jsonl_read_the_same_rows(write_file, name, content):
    table = read_table(write_file(name, content), "text", ["label"])
    assert table.texts == [text for text, _ in ROWS]
    assert table.targets == {"label": [label for _, label in ROWS]}
    first_line = 1 if name.endswith("jsonl") else 2
    assert table.lines == list(range(first_line, first_line + len(ROWS)))


def test_text_only_table_reads_without_a_label_column(write_file):
    table = read_table(write_file("texts.csv", "text\ngood film\nbad film\n"), "text", [])
    assert table.texts == ["good film", "bad film"]
    assert table.targets == {}


def test_custom_column_names(write_file):
    path = write_file("data.csv", csv_text(ROWS, header=("review", "stars")))
    task, splits = classify_splits(
        DataConfig(train=str(path), text_column="review", label_column="stars"),
        columns=("stars",),
    )
    assert task.labels == {"stars": ["neg", "pos"]}
    assert splits.train.inputs[0] in {text for text, _ in ROWS}


def test_integer_labels_sort_numerically(write_file):
    rows = [(f"text {i} {label}", label) for i in range(4) for label in ("10", "2", "1", "-3")]
    task, splits = classify_splits(DataConfig(train=str(write_file("data.csv", csv_text(rows)))))
    names = task.labels["label"]
    assert names == ["-3", "1", "2", "10"]
    # every encoded label points back at the string it came from
    texts = dict(rows)
    for part in (splits.train, splits.val, splits.test):
        for text, index in zip(part.inputs, part.targets["label"], strict=True):
            assert texts[text] == names[index]


def test_text_labels_sort_alphabetically(write_file):
    rows = [(f"text {i}", label) for i in range(3) for label in ("b", "10", "a")]
    task, _ = classify_splits(DataConfig(train=str(write_file("data.csv", csv_text(rows)))))
    assert task.labels["label"] == ["10", "a", "b"]


def test_stratified_split_keeps_every_class_on_both_sides():
    labels = [0] * 2 + [1] * 3 + [2] * 40
    kept, held = stratified_split(labels, len(labels), 0.2, seed=0)
    assert sorted(kept + held) == list(range(len(labels)))
    assert {labels[i] for i in kept} == {labels[i] for i in held} == {0, 1, 2}
    assert Counter(labels[i] for i in held)[2] == 8  # 20% of the large class


def test_split_without_strata_is_a_seeded_random_split():
    kept, held = stratified_split(None, 45, 0.2, seed=0)
    assert sorted(kept + held) == list(range(45)) and len(held) == 9
    assert stratified_split(None, 45, 0.2, seed=0) == (kept, held)
    assert stratified_split(None, 45, 0.2, seed=1) != (kept, held)


def test_splits_from_one_file_are_disjoint_and_stratified(write_file):
    rows = [
        (f"{word} text {i}", word)
        for word in ("x", "y", "z")
        for i in range(3 + 7 * "xyz".index(word))
    ]
    _, splits = classify_splits(DataConfig(train=str(write_file("data.csv", csv_text(rows)))))
    parts = (splits.train, splits.val, splits.test)
    for part in parts:
        assert set(part.targets["label"]) == {0, 1, 2}
    assert sum(len(part) for part in parts) == len(rows)
    assert len({text for part in parts for text in part.inputs}) == len(rows)


def test_k_keeps_at_most_k_per_class():
    labels = [0] * 3 + [1] * 10 + [2] * 25
    chosen = take_k_per_class(labels, 5, seed=0)
    assert Counter(labels[i] for i in chosen) == {0: 3, 1: 5, 2: 5}
    assert chosen == sorted(set(chosen))
    assert take_k_per_class(labels, 5, seed=0) == chosen  # seeded


def test_k_applies_to_the_training_split_only(write_file):
    rows = sentiment_rows(60)
    data = DataConfig(train=str(write_file("data.csv", csv_text(rows))), k=4)
    _, splits = classify_splits(data)
    assert Counter(splits.train.targets["label"]) == {0: 4, 1: 4}
    assert len(splits.test) == 12 and len(splits.val) == 4  # held out before k
    assert any("k=4" in note for note in splits.notes)


def test_bundled_reviews_read():
    train = read_table(resolve("bundled:reviews"), "text", ["label"])
    test = read_table(resolve("bundled:reviews", "test"), "text", ["label"])
    assert len(train.texts) == 5980
    assert len(test.texts) == 2000
    assert sorted(set(train.targets["label"])) == sorted(set(test.targets["label"]))
    assert sorted(set(test.targets["label"])) == ["negative", "positive"]
    task, splits = classify_splits(DataConfig(train="bundled:reviews"))
    assert task.labels["label"] == ["negative", "positive"]
    assert len(splits.test) == 2000  # the packaged test split, not held out of train
    assert len(splits.train) + len(splits.val) == 5980


def test_unknown_bundled_dataset_lists_the_available_ones():
    with pytest.raises(TsuikaError, match=r"unknown bundled dataset `nope`; available: .*reviews"):
        classify_splits(DataConfig(train="bundled:nope"))
