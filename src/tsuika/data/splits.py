"""Label vocabularies, stratified splits and k-per-class subsampling, all seeded."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from tsuika.errors import TsuikaError


def label_names(labels: list[str]) -> list[str]:
    """Sorted label set; numerically when every label is an integer ("2" before "10")."""
    unique = set(labels)
    if all(label.isascii() and label.removeprefix("-").isdecimal() for label in unique):
        return sorted(unique, key=int)
    return sorted(unique)


@dataclass
class Examples:
    """Inputs (texts or image paths) with integer labels indexing `Splits.labels`."""

    inputs: list
    labels: list[int]
    source: str = ""
    lines: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, indices: list[int]) -> Examples:
        return Examples(
            [self.inputs[i] for i in indices],
            [self.labels[i] for i in indices],
            self.source,
            [self.lines[i] for i in indices] if self.lines else [],
        )


@dataclass
class Splits:
    train: Examples
    val: Examples
    test: Examples
    labels: list[str]
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Files left out (images): each line names the file and why."""


def _by_class(labels: list[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        groups[label].append(index)
    return groups


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices into (kept, held out) with about `fraction` of every class held out.

    Every class keeps at least one example on each side when it has two or more.
    """
    rng = random.Random(seed)
    kept, held = [], []
    for _, indices in sorted(_by_class(labels).items()):
        indices = indices[:]
        rng.shuffle(indices)
        n_held = round(len(indices) * fraction)
        n_held = min(max(n_held, 1), len(indices) - 1) if len(indices) > 1 else 0
        held += indices[:n_held]
        kept += indices[n_held:]
    return sorted(kept), sorted(held)


def take_k_per_class(labels: list[int], k: int, seed: int) -> list[int]:
    """At most `k` random indices of every class (all of a class that has fewer)."""
    rng = random.Random(seed)
    chosen = []
    for _, indices in sorted(_by_class(labels).items()):
        chosen += rng.sample(indices, min(k, len(indices)))
    return sorted(chosen)


def encode_labels(labels: list[str], names: list[str], source: str, lines: list[int]) -> list[int]:
    """Map label strings to indices; a label never seen in training is an error naming its line."""
    index = {name: i for i, name in enumerate(names)}
    encoded = []
    for label, line in zip(labels, lines, strict=True):
        if label not in index:
            raise TsuikaError(
                f"{source} line {line}: label `{label}` does not occur in the training data "
                f"(training labels: {', '.join(names)}); fix the label or add training examples"
            )
        encoded.append(index[label])
    return encoded


def check_classes(names: list[str], source: str) -> None:
    if len(names) < 2:
        raise TsuikaError(
            f"{source}: only one class (`{names[0]}`) in the training data; "
            "a classifier needs at least two labels"
        )


def assemble_splits(
    pool: Examples,
    names: list[str],
    train_path: str,
    config,
    read_split: Callable[[str, str], Examples],
    noun: str = "examples",
) -> Splits:
    """Train / validation / test from a labelled pool and the optional split files.

    `read_split(path, split)` reads a validation or test file with the pool's label set.
    Held-out splits come out of the pool before `k` subsampling, so validation and test never
    share an example with training; for `bundled:` data the packaged test split is used when
    no test file is given.
    """
    notes = []
    test_path = config.test or (train_path if train_path.startswith("bundled:") else None)
    if test_path:
        test = read_split(test_path, "test")
    else:
        kept, held = stratified_split(pool.labels, config.test_fraction, config.seed)
        test, pool = pool.subset(held), pool.subset(kept)
        notes.append(f"test: {len(held)} {noun} held out of {train_path} (stratified)")
    if config.validation:
        val, train = read_split(config.validation, "validation"), pool
    else:
        kept, held = stratified_split(pool.labels, config.val_fraction, config.seed + 1)
        val, train = pool.subset(held), pool.subset(kept)
        notes.append(f"validation: {len(held)} {noun} held out of {train_path} (stratified)")
    if config.k:
        train = train.subset(take_k_per_class(train.labels, config.k, config.seed))
        notes.append(f"train: k={config.k} per class → {len(train)} {noun}")
    check_classes(label_names([names[i] for i in train.labels]), f"{train_path} (training split)")
    return Splits(train=train, val=val, test=test, labels=names, notes=notes)
