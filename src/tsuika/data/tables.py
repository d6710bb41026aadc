"""CSV, TSV and JSONL tables of (input, target columns…) rows, with errors that name the file
and line."""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

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


def read_text_file(path: Path) -> str:
    if not path.is_file():
        hint = " (it is a folder)" if path.is_dir() else ""
        raise TsuikaError(f"data file {path} not found{hint}; check the path")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise TsuikaError(
            f"{path} line {line}: bytes that are not UTF-8; re-save the file as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8`)"
        ) from None
    if not text.strip():
        raise TsuikaError(f"{path} is empty; it needs a header and at least one row")
    return text


def _json_line(path: Path, number: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise TsuikaError(f"{path} line {number}: not valid JSON ({err.msg})") from None
    except RecursionError:
        raise TsuikaError(f"{path} line {number}: JSON nested too deeply to read") from None
    except ValueError:  # Python refuses integers of more than 4,300 digits
        raise TsuikaError(
            f"{path} line {number}: a number too long to read; write it as a string"
        ) from None
    if not isinstance(row, dict):
        raise TsuikaError(f"{path} line {number}: each line must be a JSON object")
    return row


def json_records(path: Path, text: str) -> tuple[list[dict], list[int], list[str]]:
    rows, lines = [], []
    # Only CR/LF end a line: `splitlines` would also split at U+2028 or U+0085, which JSON
    # strings may hold raw (raw CR and LF they may not).
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            rows.append(_json_line(path, number, line))
            lines.append(number)
    columns = sorted({key for row in rows for key in row})
    return rows, lines, columns


def _records(path: Path, text: str) -> tuple[list[dict], list[int], list[str]]:
    """Parse rows as dicts; returns (rows, line numbers, column names)."""
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json", ".ndjson"}:
        return json_records(path, text)
    # In TSV files quotes are text (a review may open with one), not quoting: with csv's
    # default quoting, a leading `"` would swallow the rows up to the next quote.
    tsv = suffix in {".tsv", ".tab"}
    reader = csv.DictReader(
        io.StringIO(text, newline=""),
        delimiter="\t" if tsv else ",",
        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
    )
    rows, lines = [], []
    try:
        columns = list(reader.fieldnames or [])
        for row in reader:
            if None in row:  # DictReader's home for fields beyond the header's
                raise TsuikaError(
                    f"{path} line {reader.line_num}: {len(columns) + len(row[None])} fields "
                    f"but the header has {len(columns)}; put texts that contain "
                    f"{'a tab' if tsv else 'a comma'} in double quotes"
                    + ("" if tsv else ' (and double any " inside them)')
                )
            rows.append(row)
            # line_num is the row's last line; quoted newlines move its start up.
            inner = sum(v.count("\n") for v in row.values() if isinstance(v, str))
            lines.append(reader.line_num - inner)
    except csv.Error as err:
        raise TsuikaError(f"{path} line {reader.line_num}: malformed row ({err})") from None
    return rows, lines, columns


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
    rows, lines, columns = _records(path, read_text_file(path))
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
