"""Files as users have them: whatever pandas or `datasets` writes, tsuika reads back the same
(issue 33, item 2)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from helpers import fast_config, sentiment_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tsuika
from tsuika.data.tables import read_table
from tsuika.errors import TsuikaError

Writer = Callable[[pd.DataFrame, Path], Path]


def _to(name: str, **options) -> Writer:
    def write(frame: pd.DataFrame, folder: Path) -> Path:
        path = folder / name
        if name.endswith(".parquet"):
            frame.to_parquet(path, index=False)
        elif ".json" in name:
            frame.to_json(path, force_ascii=False, **options)
        else:
            frame.to_csv(path, index=False, **options)
        return path

    return write


PANDAS_WRITERS: dict[str, Writer] = {
    "csv": _to("data.csv"),
    "csv with a byte-order mark": _to("data.csv", encoding="utf-8-sig"),
    "csv with ; (Excel's European locales)": _to("data.csv", sep=";"),
    "tsv": _to("data.tsv", sep="\t"),
    "gzip csv": _to("data.csv.gz"),
    "gzip tsv": _to("data.tsv.gz", sep="\t"),
    "json lines": _to("data.jsonl", orient="records", lines=True),
    "json array": _to("data.json", orient="records"),
    "parquet": _to("data.parquet"),
}

# No lone carriage return: pandas writes it unquoted and reads it back as a line break itself
# ("0\r" → two rows), so no reader can return what was meant.
TEXTS = (
    st.lists(
        st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"])
        | st.sampled_from(["\t", "\n", "\r\n", '"', ",", ";", "'", " "]),
        min_size=1,
        max_size=24,
    )
    .map("".join)
    .filter(str.strip)
)
LABELS = st.sampled_from(["pos", "neg", "très bien", "5", "n/a label"])


def _frame(texts: list[str], labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"review": texts, "label": labels})


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(st.tuples(TEXTS, LABELS), min_size=1, max_size=8),
    format_name=st.sampled_from(sorted(PANDAS_WRITERS)),
)
def test_any_table_pandas_writes_reads_back_the_same(rows, format_name):
    texts, labels = [text for text, _ in rows], [label for _, label in rows]
    with tempfile.TemporaryDirectory() as folder:
        path = PANDAS_WRITERS[format_name](_frame(texts, labels), Path(folder))
        table = read_table(path, "review", ["label"])
    assert table.texts == texts
    assert table.targets["label"] == [label.strip() for label in labels]


def test_the_issue_s_tsv_with_quoted_newlines_and_tabs(tmp_path, capsys):
    """979 reviews in a TSV written by pandas stopped at "line 13: empty text"."""
    texts = ["fine", "two\nlines", "a\ttab", 'says "hi"', '"opens with a quote', "end"]
    path = tmp_path / "reviews.tsv"
    _frame(texts, ["pos", "neg"] * 3).to_csv(path, sep="\t", index=False)
    assert pd.read_csv(path, sep="\t")["review"].tolist() == texts
    table = read_table(path, "review", ["label"])
    assert table.texts == texts
    assert table.lines == [2, 3, 5, 6, 7, 8]  # where each row starts
    assert "quotes read as text" not in capsys.readouterr().err


def test_a_tsv_whose_quotes_are_text_says_so(tmp_path, capsys):
    """Issue 19's file: not standard-quoted, so the quotes are text (pandas would fail on it:
    "EOF inside string starting at row 1")."""
    path = tmp_path / "data.tsv"
    path.write_text('text\tlabel\n"Stock up on silver bullets\tpos\nok film\tneg\n')
    table = read_table(path, "text", ["label"])
    assert table.texts == ['"Stock up on silver bullets', "ok film"]
    assert "quotes read as text (as standard-quoted TSV, line 2" in capsys.readouterr().err


def test_datasets_folders_and_files(tmp_path):
    import datasets

    texts, labels = ["good film", "a, b; and\nmore", 'a "quote"'], ["pos", "neg", "pos"]
    dataset = datasets.Dataset.from_dict({"review": texts, "label": labels})
    dataset.save_to_disk(str(tmp_path / "saved"))
    dataset.to_json(str(tmp_path / "rows.json"))
    dataset.to_csv(str(tmp_path / "rows.csv"), index=False)
    for path in (tmp_path / "saved", tmp_path / "rows.json", tmp_path / "rows.csv"):
        table = read_table(path, "review", ["label"])
        assert table.texts == texts and table.targets["label"] == labels, path
    datasets.DatasetDict({"train": dataset, "test": dataset}).save_to_disk(str(tmp_path / "both"))
    with pytest.raises(TsuikaError, match=r"several splits \(test, train\); give one of them"):
        read_table(tmp_path / "both", "review", ["label"])
    assert read_table(tmp_path / "both" / "train", "review", ["label"]).texts == texts


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("data.csv.gz", b"not gzip", "not a readable gzip file"),
        ("data.parquet", b"PAR1 not really", "cannot be read as Parquet"),
        ("data.json", b'[{"review": "a", "label": "pos"}, 3]', "item 2: each item must be"),
    ],
)
def test_a_damaged_file_is_one_line_naming_it(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TsuikaError, match=message) as raised:
        read_table(path, "review", ["label"])
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("format_name", sorted(PANDAS_WRITERS))
def test_every_format_trains(tiny_bert_dir, tmp_path, format_name):
    rows = sentiment_rows(40)
    frame = pd.DataFrame({"text": [t for t, _ in rows], "label": [label for _, label in rows]})
    path = PANDAS_WRITERS[format_name](frame, tmp_path)
    run = tsuika.train(fast_config(tiny_bert_dir, path, tmp_path / "runs", train={"epochs": 1}))
    assert run.summary["data"]["train"] + run.summary["data"]["validation"] > 0
    assert set(run.summary["targets"]["labels"]["label"]) == {"pos", "neg"}
