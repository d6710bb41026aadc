"""Text data: a CSV/TSV/JSONL table → examples of (text, raw target strings)."""

from __future__ import annotations

from tsuika.config import DataConfig
from tsuika.data.splits import Examples
from tsuika.data.tables import read_table, resolve


def read_text_examples(
    path: str,
    split: str,
    config: DataConfig,
    columns: list[str],
    label_key: str = "data.label_column",
) -> Examples:
    table = read_table(resolve(path, split), config.text_column, columns, label_key=label_key)
    return Examples(table.texts, table.targets, str(table.path), table.lines)
