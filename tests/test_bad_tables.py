"""Awkward tables: every mistake is one TsuikaError naming the file (and line or column), odd
but valid content reads the same in every format, and no input at all raises anything else."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from helpers import csv_text, jsonl_text, sentiment_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tsuika.data.splits import label_names
from tsuika.data.tables import read_table
from tsuika.errors import TsuikaError

ROWS = sentiment_rows(6)


@pytest.mark.parametrize("sep,name", [(",", "data.csv"), ("\t", "data.tsv")])
def test_duplicated_column_is_an_error(write_file, sep, name):
    lines = [sep.join(["text", "label", "label"])]
    lines += [f"{text}{sep}{label}{sep}other" for text, label in ROWS]
    path = write_file(name, "\n".join(lines) + "\n")
    with pytest.raises(TsuikaError, match="duplicated column `label`") as err:
        read_table(path, "text", ["label"])
    assert str(path) in str(err.value)


def test_duplicated_unused_column_is_fine(write_file):
    path = write_file("data.csv", "text,note,note,label\ngood film,a,b,pos\n")
    assert read_table(path, "text", ["label"]).targets == {"label": ["pos"]}


@pytest.mark.parametrize("label", ["NaN", "nan", "NA", "n/a", "N/A", "null", "NULL", "None", " "])
def test_missing_label_markers_are_errors(write_file, label):
    path = write_file("data.csv", f"text,label\ngood film,pos\nbad film,{label}\n")
    with pytest.raises(TsuikaError, match="line 3: missing label") as err:
        read_table(path, "text", ["label"])
    assert str(path) in str(err.value) and "remove the row or add its label" in str(err.value)


@pytest.mark.parametrize("label", ["NaN", "null", None])
def test_missing_label_markers_in_jsonl(write_file, label):
    rows = [{"text": "good film", "label": "pos"}, {"text": "bad film", "label": label}]
    path = write_file("data.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(TsuikaError, match="line 2: missing label"):
        read_table(path, "text", ["label"])


def test_json_nan_literal_label_is_missing(write_file):
    path = write_file("data.jsonl", '{"text": "good film", "label": NaN}\n')
    with pytest.raises(TsuikaError, match="line 1: missing label"):
        read_table(path, "text", ["label"])


def test_tsv_text_opening_with_a_quote_keeps_every_row(write_file):
    rows = [(f'"quoted" start {i}' if i % 7 == 0 else f"plain text {i}", "pos") for i in range(45)]
    table = read_table(write_file("data.tsv", csv_text(rows, sep="\t")), "text", ["label"])
    assert table.texts == [text for text, _ in rows]
    assert table.lines == list(range(2, 47))


def test_tsv_lone_quote_is_text(write_file):
    path = write_file("data.tsv", 'text\tlabel\n"unclosed\tpos\nnext row\tneg\n')
    table = read_table(path, "text", ["label"])
    assert table.texts == ['"unclosed', "next row"] and table.targets["label"] == ["pos", "neg"]


def test_csv_quoted_newlines_still_read(write_file):
    path = write_file("data.csv", 'text,label\n"two\nlines",pos\nthird,neg\n')
    table = read_table(path, "text", ["label"])
    assert table.texts == ["two\nlines", "third"] and table.lines == [2, 4]


@pytest.mark.parametrize("name", ["data.csv", "data.tsv", "data.jsonl"])
def test_very_long_text_reads_in_every_format(write_file, name):
    rows = [("word " * 40_000, "pos"), ("short", "neg")]  # 200,000 characters
    writers = {"csv": csv_text, "tsv": lambda rows: csv_text(rows, sep="\t"), "jsonl": jsonl_text}
    content = writers[name.split(".")[1]](rows)
    table = read_table(write_file(name, content), "text", ["label"])
    assert table.texts == [text for text, _ in rows]


def test_line_separator_characters_inside_jsonl_strings(write_file):
    # U+2028 and U+0085 are legal raw inside JSON strings; they are not line ends.
    path = write_file("data.jsonl", '{"text": "a\u2028b\x85c", "label": "pos"}\n')
    table = read_table(path, "text", ["label"])
    assert table.texts == ["a\u2028b\x85c"] and table.lines == [1]


@pytest.mark.parametrize(
    "labels,expected",
    [
        (["²", "1"], ["1", "²"]),  # isdigit() but not int()
        (["--5", "3"], ["--5", "3"]),
        (["10", "2", "-1"], ["-1", "2", "10"]),
        (["١", "2"], ["2", "١"]),  # Arabic-Indic one: int() takes it, but sort as text
    ],
)
def test_label_names_only_sorts_numerically_for_ascii_integers(labels, expected):
    assert label_names(labels) == expected


def test_superscript_label_reads_and_sorts(write_file):
    from helpers import classify_splits

    from tsuika.config import DataConfig

    rows = [(text, "²" if label == "pos" else "1") for text, label in sentiment_rows(20)]
    task, splits = classify_splits(DataConfig(train=str(write_file("data.csv", csv_text(rows)))))
    assert task.labels["label"] == ["1", "²"]
    assert set(splits.train.targets["label"]) == {0, 1}


@pytest.mark.parametrize("value", [["a", "b"], {"a": 1}, True, 5, 2.5])
def test_jsonl_text_must_be_a_string(write_file, value):
    rows = [{"text": "good film", "label": "pos"}, {"text": value, "label": "neg"}]
    path = write_file("data.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(TsuikaError, match=r"line 2: .*`text` must be a string") as err:
        read_table(path, "text", ["label"])
    assert str(path) in str(err.value)


@pytest.mark.parametrize("value", [["a"], {"a": 1}])
def test_jsonl_label_must_not_be_a_list_or_object(write_file, value):
    rows = [{"text": "good film", "label": "pos"}, {"text": "bad film", "label": value}]
    path = write_file("data.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(TsuikaError, match=r"line 2: .*`label`"):
        read_table(path, "text", ["label"])


def test_jsonl_number_labels_become_strings(write_file):
    rows = [{"text": "good film", "label": 1}, {"text": "bad film", "label": 0}]
    path = write_file("data.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    assert read_table(path, "text", ["label"]).targets == {"label": ["1", "0"]}


@pytest.mark.parametrize(
    "line", ["[" * 100_000, '{"text": ' + "1" * 5000 + "}", '{"text": "\\ud800", "label": "x"}']
)
def test_jsonl_that_python_cannot_hold_is_an_error(write_file, line):
    path = write_file("data.jsonl", line + "\n")
    with pytest.raises(TsuikaError, match="line 1"):
        read_table(path, "text", ["label"])


def test_header_over_the_old_field_limit_reads(write_file):
    long_name = "x" * 200_000
    path = write_file("data.csv", f"text,label,{long_name}\ngood film,pos,1\n")
    assert read_table(path, "text", ["label"]).texts == ["good film"]


# --- properties: any input is a Table of non-empty strings or a TsuikaError -----------------

SUFFIXES = [".csv", ".tsv", ".jsonl"]
COLUMN_NAMES = st.sampled_from(["text", "label", "", "x", "TEXT", '"text"', "text "])
CELL = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from(list('",\t\n\r"')),
    max_size=12,
)
WORD = st.sampled_from(["good film", "pos", "neg", "NaN", '"quoted" text', "a,b"])
ENCODINGS = ["utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1"]


def check_read(content: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(content)
        try:
            table = read_table(path, "text", ["label"])
        except TsuikaError as err:
            assert str(path) in str(err)
            return
    assert list(table.targets) == ["label"]
    labels = table.targets["label"]
    assert len(table.texts) == len(labels) == len(table.lines) > 0
    for value in table.texts + labels:
        assert isinstance(value, str) and value.strip()
        value.encode("utf-8")  # writable to summaries and prediction files


SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@SETTINGS
@given(content=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES))
def test_any_bytes_read_or_raise_a_tsuika_error(content, suffix):
    check_read(content, suffix)


@st.composite
def layouts(draw) -> tuple[str, str]:
    """(content, suffix): a header from a small alphabet (duplicates, empty names) and ragged
    rows, mostly with the separator the suffix implies."""
    suffix = draw(st.sampled_from([".csv", ".csv", ".tsv", ".tsv", ".jsonl"]))
    sep = draw(st.sampled_from(["\t", "\t", "\t", ","] if suffix == ".tsv" else [",", ",", "\t"]))
    extras = draw(st.lists(COLUMN_NAMES, max_size=2))
    header = draw(
        st.permutations(["text", "label", *extras]) | st.lists(COLUMN_NAMES, min_size=1, max_size=4)
    )
    width = st.integers(0, len(header) + 1)
    rows = draw(
        st.lists(
            width.flatmap(lambda n: st.lists(WORD | CELL, min_size=n, max_size=n)),
            min_size=1,
            max_size=6,
        )
    )
    lines = [sep.join(header)] + [sep.join(row) for row in rows]
    return draw(st.sampled_from(["\n", "\r\n"])).join(lines), suffix


@SETTINGS
@given(layout=layouts(), encoding=st.sampled_from(ENCODINGS))
def test_any_layout_in_any_encoding_reads_or_raises_a_tsuika_error(layout, encoding):
    text, suffix = layout
    check_read(text.encode(encoding, errors="replace"), suffix)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | CELL,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(COLUMN_NAMES, inner, max_size=2),
    max_leaves=4,
)


@SETTINGS
@given(rows=st.lists(st.dictionaries(COLUMN_NAMES, JSON_VALUES, max_size=3) | JSON_VALUES))
def test_any_json_lines_read_or_raise_a_tsuika_error(rows):
    check_read("".join(json.dumps(row) + "\n" for row in rows).encode(), ".jsonl")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("train.csv", "text,label\ngood film,pos\na long, rambling film,neg\n"),
        ("train.tsv", "text\tlabel\ngood film\tpos\na long\trambling film\tneg\n"),
    ],
)
def test_a_row_with_more_fields_than_the_header_is_an_error(write_file, name, content):
    # Before: the extra field was dropped and "a long" became the text with label "rambling film".
    with pytest.raises(TsuikaError, match=r"line 3: 3 fields but the header has 2"):
        read_table(write_file(name, content), "text", ["label"])
