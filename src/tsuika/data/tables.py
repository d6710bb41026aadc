"""CSV, TSV and JSONL tables of (text, label) rows, with errors that name the file and line."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from tsuika.errors import TsuikaError

BUNDLED = Path(__file__).parent / "bundled"


@dataclass
class Table:
    """Rows read from one file; `lines[i]` is the file line where row i starts (for messages)."""

    path: Path
    texts: list[str]
    labels: list[str]
    lines: list[int]


def resolve(path: str, split: str = "train") -> Path:
    """`bundled:reviews` → the packaged file for `split`; anything else is a path."""
    if path.startswith("bundled:"):
        name = path.removeprefix("bundled:")
        found = BUNDLED / name / f"{split}.csv"
        if not found.is_file():
            names = sorted(p.name for p in BUNDLED.iterdir() if (p / "train.csv").is_file())
            raise TsuikaError(f"unknown bundled dataset `{name}`; available: {', '.join(names)}")
        return found
    return Path(path).expanduser()


def _decode(path: Path) -> str:
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


def _records(path: Path, text: str) -> tuple[list[dict], list[int], list[str]]:
    """Parse rows as dicts; returns (rows, line numbers, column names)."""
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json", ".ndjson"}:
        rows, lines = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TsuikaError(f"{path} line {number}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise TsuikaError(f"{path} line {number}: each line must be a JSON object")
            rows.append(row)
            lines.append(number)
        columns = sorted({key for row in rows for key in row})
        return rows, lines, columns
    delimiter = "\t" if suffix in {".tsv", ".tab"} else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns = list(reader.fieldnames or [])
    rows, lines = [], []
    try:
        for row in reader:
            rows.append(row)
            # line_num is the row's last line; quoted newlines move its start up.
            inner = sum(v.count("\n") for v in row.values() if isinstance(v, str))
            lines.append(reader.line_num - inner)
    except csv.Error as err:
        raise TsuikaError(f"{path} line {reader.line_num}: malformed row ({err})") from None
    return rows, lines, columns


def read_table(path: str | Path, text_column: str, label_column: str | None) -> Table:
    """Read a table; `label_column=None` reads texts only (for prediction files)."""
    path = Path(path)
    rows, lines, columns = _records(path, _decode(path))
    if not rows:
        raise TsuikaError(f"{path} has a header but no rows")
    wanted = [text_column] + ([label_column] if label_column else [])
    for column in wanted:
        if column not in columns:
            key = "data.text_column" if column == text_column else "data.label_column"
            raise TsuikaError(
                f"{path}: no column `{column}`; columns are {', '.join(columns)} "
                f"(set {key}=... to the right name)"
            )
    texts, labels = [], []
    for row, line in zip(rows, lines, strict=True):
        text = row.get(text_column)
        if text is None or not str(text).strip():
            raise TsuikaError(
                f"{path} line {line}: empty text in column `{text_column}`; "
                "remove the row or fill in the text"
            )
        texts.append(str(text))
        if label_column:
            label = row.get(label_column)
            if label is None or str(label).strip() == "":
                raise TsuikaError(
                    f"{path} line {line}: missing label in column `{label_column}`; "
                    "remove the row or add its label"
                )
            labels.append(str(label).strip())
    return Table(path=path, texts=texts, labels=labels, lines=lines)
