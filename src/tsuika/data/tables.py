"""Tables of (input, target columns…) rows — in any format `data/formats.py` reads — checked,
with errors that name the file and line."""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

from tsuika.data.formats import read_rows
from tsuika.errors import TsuikaError

BUNDLED = Path(__file__).parent / "bundled"
MISSING_LABELS = {"", "nan", "na", "n/a", "null", "none"}
"""Labels that spreadsheets and pandas write for an empty cell (compared lower-cased)."""


def _raise_field_limit() -> None:
    # The csv module refuses fields over 131,072 characters by default, while JSONL takes any
    # length; a long document must read the same in both formats.
    try:
        csv.field_size_limit(sys.maxsize)
    except OverflowError:  # the limit is a C long, 32 bits on some platforms
        csv.field_size_limit(2**31 - 1)


_raise_field_limit()


@dataclass
class Table:
    """Rows read from one file; `lines[i]` is the file line where row i starts (for messages)."""

    path: Path
    texts: list[str]
    """The input column: texts, or image paths."""
    targets: dict[str, list[str]]
    """Target column → its value in every row (stripped strings; never missing)."""
    lines: list[int]


def resolve(path: str, split: str = "train") -> Path:
    """`bundled:reviews` → the packaged file for `split` (CSV, or JSONL for chat data);
    anything else is a path."""
    if path.startswith("bundled:"):
        name = path.removeprefix("bundled:")
        for suffix in (".csv", ".jsonl"):
            found = BUNDLED / name / f"{split}{suffix}"
            if found.is_file():
                return found
        names = sorted(
            p.name for p in BUNDLED.iterdir() if any(p.glob("train.csv")) or any(p.glob("*.jsonl"))
        )
        raise TsuikaError(f"unknown bundled dataset `{name}`; available: {', '.join(names)}")
    return Path(path).expanduser()


def _check_columns(
    path: Path,
    columns: list[str],
    text_column: str,
    target_columns: list[str],
    input_key: str = "data.text_column",
    label_key: str = "data.label_column",
) -> None:
    for column in [text_column, *target_columns]:
        key = input_key if column == text_column else label_key
        if column not in columns:
            raise TsuikaError(
                f"{path}: no column `{column}`; columns are {', '.join(columns)} "
                f"(set {key}=... to the right name)"
            )
        if columns.count(column) > 1:  # csv.DictReader would silently keep the last one
            raise TsuikaError(
                f"{path}: duplicated column `{column}` in the header; rename or remove one"
            )


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    return "a list" if isinstance(value, list) else "an object"


def _checked(path: Path, line: int, column: str, value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON can spell half a surrogate pair; no file can hold it
        raise TsuikaError(
            f"{path} line {line}: `{column}` holds an unpaired \\u surrogate escape; fix it"
        ) from None
    return value


def text_value(path: Path, line: int, column: str, value: object) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise TsuikaError(
            f"{path} line {line}: empty text in column `{column}`; "
            "remove the row or fill in the text"
        )
    if not isinstance(value, str):
        raise TsuikaError(
            f"{path} line {line}: `{column}` must be a string, not {_json_kind(value)}; "
            "put the text in quotes"
        )
    return _checked(path, line, column, value)


def _label(path: Path, line: int, column: str, value: object) -> str:
    if isinstance(value, list | dict):
        raise TsuikaError(
            f"{path} line {line}: label in column `{column}` is {_json_kind(value)}; "
            "give one string or number"
        )
    label = "" if value is None else str(value).strip()
    # `nan` also covers a JSON NaN, which json.loads reads as float("nan").
    if label.lower() in MISSING_LABELS:
        raise TsuikaError(
            f"{path} line {line}: missing label in column `{column}` ({label or 'empty'}); "
            "remove the row or add its label"
        )
    return _checked(path, line, column, label)


def read_table(
    path: str | Path,
    text_column: str,
    target_columns: list[str],
    input_key: str = "data.text_column",
    label_key: str = "data.label_column",
) -> Table:
    """Read a table's input column and target columns (none: inputs only, for prediction).
    `input_key` and `label_key` are the settings that name them (`data.image_column` for a
    table of image paths, `data.retain_label_column` for a retain file), for the message
    when a column is missing."""
    path = Path(path)
    rows, lines, columns = read_rows(path)
    if not rows:
        raise TsuikaError(f"{path} has a header but no rows")
    _check_columns(path, columns, text_column, target_columns, input_key, label_key)
    texts = [
        text_value(path, line, text_column, row.get(text_column))
        for row, line in zip(rows, lines, strict=True)
    ]
    targets = {
        column: [
            _label(path, line, column, row.get(column))
            for row, line in zip(rows, lines, strict=True)
        ]
        for column in target_columns
    }
    return Table(path=path, texts=texts, targets=targets, lines=lines)
