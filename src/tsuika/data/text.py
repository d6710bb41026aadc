"""Text classification data: files → train / validation / test splits of (text, label)."""

from __future__ import annotations

from tsuika.config import DataConfig
from tsuika.data.splits import (
    Examples,
    Splits,
    assemble_splits,
    check_classes,
    encode_labels,
    label_names,
)
from tsuika.data.tables import read_table, resolve


def _read(path: str, split: str, config: DataConfig):
    return read_table(resolve(path, split), config.text_column, config.label_column)


def load_text_splits(config: DataConfig) -> Splits:
    """Read the files named in `config` and build the three splits (`assemble_splits`); a
    label in a validation or test file that training never saw is an error naming its line."""
    train_path = config.train or "bundled:reviews"
    pool = _read(train_path, "train", config)
    names = label_names(pool.labels)
    check_classes(names, str(pool.path))

    def examples(table) -> Examples:
        source = str(table.path)
        labels = encode_labels(table.labels, names, source, table.lines)
        return Examples(table.texts, labels, source, table.lines)

    return assemble_splits(
        examples(pool),
        names,
        train_path,
        config,
        lambda path, split: examples(_read(path, split, config)),
    )
