"""Tables as users have them, read into rows: whatever pandas or Hugging Face `datasets`
writes and reads back, tsuika reads the same.

- CSV and TSV with standard quoting (a field holding the separator, a newline or a quote is
  quoted, inner quotes doubled: `DataFrame.to_csv`), a UTF-8 byte-order mark, `;` or tab as
  the separator of a `.csv` (Excel writes `;` in many locales: the header line tells);
- a TSV whose texts merely *contain* quotes (a review that opens with one): when the file is
  not standard-quoted TSV, quotes are text, and a warning says so;
- JSON Lines, or one JSON array of objects (`to_json(orient="records")`), in `.json`,
  `.jsonl`, `.ndjson`;
- any of these gzip-compressed (`.csv.gz`, `.tsv.gz`, `.jsonl.gz`, …);
- Parquet (`.parquet`, `.pq`) and a `datasets` folder (`save_to_disk`), through pyarrow.

Every reader returns rows as dicts, the file line (or row) each starts at, and the columns.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from pathlib import Path
from typing import NamedTuple

from tsuika.console import warn
from tsuika.errors import TsuikaError

JSON_SUFFIXES = {".jsonl", ".json", ".ndjson"}
TSV_SUFFIXES = {".tsv", ".tab"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
SEPARATORS = (",", ";", "\t")


class Rows(NamedTuple):
    rows: list[dict]
    lines: list[int]
    """Where each row starts: its file line (text formats) or its row number (Parquet and
    `datasets`, counted from 1)."""
    columns: list[str]


def read_text_file(path: Path) -> str:
    """A text file's contents as UTF-8 (a byte-order mark dropped; gzip undone)."""
    if not path.is_file():
        hint = " (it is a folder)" if path.is_dir() else ""
        raise TsuikaError(f"data file {path} not found{hint}; check the path")
    raw = path.read_bytes()
    if path.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise TsuikaError(
                f"{path}: not a readable gzip file ({err}); compress it again"
            ) from None
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


def _json_value(path: Path, where: str, text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise TsuikaError(f"{path} {where}: not valid JSON ({err.msg})") from None
    except RecursionError:
        raise TsuikaError(f"{path} {where}: JSON nested too deeply to read") from None
    except ValueError:  # Python refuses integers of more than 4,300 digits
        raise TsuikaError(
            f"{path} {where}: a number too long to read; write it as a string"
        ) from None


def _json_object(path: Path, where: str, row: object) -> dict:
    if not isinstance(row, dict):
        unit = where.split()[0]
        raise TsuikaError(f"{path} {where}: each {unit} must be a JSON object")
    return row


def json_records(path: Path, text: str) -> Rows:
    """JSON Lines, or a JSON array of objects (as pandas' `to_json(orient="records")` writes)."""
    if text.lstrip().startswith("["):
        array = _json_value(path, "line 1", text)
        if not isinstance(array, list):
            raise TsuikaError(f"{path}: not a JSON array of objects")
        rows = [_json_object(path, f"item {i}", row) for i, row in enumerate(array, start=1)]
        lines = list(range(1, len(rows) + 1))
    else:
        rows, lines = [], []
        # Only CR/LF end a line: `splitlines` would also split at U+2028 or U+0085, which JSON
        # strings may hold raw (raw CR and LF they may not).
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                where = f"line {number}"
                rows.append(_json_object(path, where, _json_value(path, where, line)))
                lines.append(number)
    columns = sorted({key for row in rows for key in row})
    return Rows(rows, lines, columns)


def _separator(header: str) -> str:
    """The separator a `.csv` header line uses most, outside quotes (`,` on a tie or none)."""
    outside = "".join(part for i, part in enumerate(header.split('"')) if i % 2 == 0)
    counts = {sep: outside.count(sep) for sep in SEPARATORS}
    best = max(SEPARATORS, key=lambda sep: counts[sep])  # max keeps the first of equals: ","
    return best if counts[best] else ","


class Unread(Exception):
    """A delimited reading that failed: (line, message)."""


def _delimited(text: str, separator: str, quoting: int, strict: bool) -> Rows:
    reader = csv.DictReader(
        io.StringIO(text, newline=""), delimiter=separator, quoting=quoting, strict=strict
    )
    rows, lines, last = [], [], 1  # the line the last good row (or the header) ended on
    try:
        columns = list(reader.fieldnames or [])
        last = reader.line_num
        for row in reader:
            if None in row:  # DictReader's home for fields beyond the header's
                fields = len(columns) + len(row[None])
                what = {"\t": "a tab", ";": "a semicolon"}.get(separator, "a comma")
                raise Unread(
                    reader.line_num,
                    f"{fields} fields but the header has {len(columns)}; put texts that "
                    f'contain {what} in double quotes (and double any " inside them)',
                )
            rows.append(row)
            # line_num is the row's last line; quoted newlines move its start up.
            inner = sum(v.count("\n") for v in row.values() if isinstance(v, str))
            lines.append(reader.line_num - inner)
            last = reader.line_num
    except csv.Error as err:  # named by the line its row starts on, as pandas does
        raise Unread(last + 1, f"malformed row ({err})") from None
    return Rows(rows, lines, columns)


def delimited_records(path: Path, text: str) -> Rows:
    """CSV or TSV with standard quoting; a TSV that is not standard-quoted reads its quotes as
    text (issue 19: a review opening with a quote must not swallow the rows after it)."""
    inner = Path(path.stem).suffix.lower() if path.suffix.lower() == ".gz" else ""
    tsv = path.suffix.lower() in TSV_SUFFIXES or inner in TSV_SUFFIXES
    separator = "\t" if tsv else _separator(text.split("\n", 1)[0])
    try:
        # strict for a TSV: a quote inside a field is an error rather than a guess, which
        # tells a TSV whose quotes are text from one that quotes its fields
        return _delimited(text, separator, csv.QUOTE_MINIMAL, strict=tsv)
    except Unread as unread:
        standard = unread
    if not tsv or '"' not in text:
        line, message = standard.args
        raise TsuikaError(f"{path} line {line}: {message}") from None
    try:
        rows = _delimited(text, separator, csv.QUOTE_NONE, strict=False)
    except Unread as unread:
        line, message = unread.args
        raise TsuikaError(f"{path} line {line}: {message}") from None
    line, message = standard.args
    reason = message.split(";")[0]
    warn(f"{path}: quotes read as text (as standard-quoted TSV, line {line}: {reason})")
    return rows


def arrow_records(path: Path) -> Rows:
    """Parquet, or a Hugging Face `datasets` folder (`save_to_disk`: Arrow stream files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.is_dir():
            files = sorted(path.glob("data-*.arrow")) or sorted(path.glob("*.arrow"))
            tables = []
            for file in files:
                with pa.memory_map(str(file)) as source:
                    tables.append(pa.ipc.open_stream(source).read_all())
            table = pa.concat_tables(tables) if tables else None
        else:
            table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        kind = "a datasets folder" if path.is_dir() else "Parquet"
        raise TsuikaError(f"{path}: cannot be read as {kind} ({err})") from None
    if table is None:
        raise TsuikaError(
            f"{path}: a folder without .arrow files; give a table file or a `save_to_disk` folder"
        )
    rows = table.to_pylist()
    return Rows(rows, list(range(1, len(rows) + 1)), list(table.column_names))


def is_datasets_folder(path: Path) -> bool:
    """A folder `Dataset.save_to_disk` wrote (its Arrow files beside these two)."""
    marks = ("dataset_info.json", "state.json")
    return path.is_dir() and any((path / mark).is_file() for mark in marks)


def read_rows(path: Path) -> Rows:
    """Every row of a table file (or `datasets` folder), by its format."""
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise TsuikaError(
            f"{path} holds several splits ({', '.join(splits)}); give one of them, e.g. "
            f"data.train={path / (splits[0] if splits else 'train')}"
        )
    if is_datasets_folder(path):
        return arrow_records(path)
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES and path.is_file():
        return arrow_records(path)
    text = read_text_file(path)
    if suffix == ".gz":
        suffix = Path(path.stem).suffix.lower()
    if suffix in JSON_SUFFIXES:
        return json_records(path, text)
    return delimited_records(path, text)
