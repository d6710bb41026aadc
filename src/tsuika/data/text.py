"""Text classification data: files → train / validation / test splits of (text, label)."""

from __future__ import annotations

from tsuika.config import DataConfig
from tsuika.data.splits import (
    Examples,
    Splits,
    check_classes,
    encode_labels,
    label_names,
    stratified_split,
    take_k_per_class,
)
from tsuika.data.tables import read_table, resolve


def _read(path: str, split: str, config: DataConfig):
    return read_table(resolve(path, split), config.text_column, config.label_column)


def load_text_splits(config: DataConfig) -> Splits:
    """Read the files named in `config` and build the three splits.

    Held-out splits come out of the training file before `k` subsampling, so validation and
    test never share an example with training. For `bundled:` data the packaged test split is
    used when no test file is given.
    """
    notes = []
    train_path = config.train or "bundled:reviews"
    pool = _read(train_path, "train", config)
    names = label_names(pool.labels)
    check_classes(names, str(pool.path))
    source = str(pool.path)
    all_examples = Examples(
        pool.texts, encode_labels(pool.labels, names, source, pool.lines), source, pool.lines
    )

    test_path = config.test or (train_path if train_path.startswith("bundled:") else None)
    if test_path:
        table = _read(test_path, "test", config)
        test = Examples(
            table.texts,
            encode_labels(table.labels, names, str(table.path), table.lines),
            str(table.path),
            table.lines,
        )
    else:
        kept, held = stratified_split(all_examples.labels, config.test_fraction, config.seed)
        test, all_examples = all_examples.subset(held), all_examples.subset(kept)
        notes.append(f"test: {len(held)} examples held out of {source} (stratified)")

    if config.validation:
        table = _read(config.validation, "validation", config)
        val = Examples(
            table.texts,
            encode_labels(table.labels, names, str(table.path), table.lines),
            str(table.path),
            table.lines,
        )
        train = all_examples
    else:
        kept, held = stratified_split(all_examples.labels, config.val_fraction, config.seed + 1)
        val, train = all_examples.subset(held), all_examples.subset(kept)
        notes.append(f"validation: {len(held)} examples held out of {source} (stratified)")

    if config.k:
        train = train.subset(take_k_per_class(train.labels, config.k, config.seed))
        notes.append(f"train: k={config.k} per class → {len(train)} examples")
    check_classes(label_names([names[i] for i in train.labels]), f"{source} (training split)")
    return Splits(train=train, val=val, test=test, labels=names, notes=notes)
