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
    """Inputs (texts or decoded images) with their targets, one list per target column:
    raw strings as read, or numbers once a task has encoded them."""

    inputs: list
    targets: dict[str, list] = field(default_factory=dict)
    source: str = ""
    lines: list[int] = field(default_factory=list)
    """Line of each example in its table (text), for error messages."""
    names: list[str] = field(default_factory=list)
    """Where each example came from when it is a file (images: its path), for reports."""

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, indices: list[int]) -> Examples:
        return Examples(
            [self.inputs[i] for i in indices],
            {key: [values[i] for i in indices] for key, values in self.targets.items()},
            self.source,
            [self.lines[i] for i in indices] if self.lines else [],
            [self.names[i] for i in indices] if self.names else [],
        )


@dataclass
class Splits:
    train: Examples
    val: Examples
    test: Examples
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Files left out (images): each line names the file and why."""

    def with_validation_given_back(self, why: str) -> Splits:
        """Validation joins training (nothing selects on it, `why`); an empty one remains."""
        given = len(self.val)
        train = Examples(
            self.train.inputs + self.val.inputs,
            {key: values + self.val.targets[key] for key, values in self.train.targets.items()},
            self.train.source,
            self.train.lines + self.val.lines,
            self.train.names + self.val.names,
        )
        note = f"validation: the {given} held-out examples went back to training ({why})"
        return Splits(train, self.val.subset([]), self.test, [*self.notes, note], self.skipped)


def _by_class(labels: list[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        groups[label].append(index)
    return groups


def stratified_split(
    strata: list[int] | None, n: int, fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split indices 0..n-1 into (kept, held out) with about `fraction` held out — of every
    stratum (class) when `strata` is given, else of the whole (a seeded random split).

    Every stratum keeps at least one example on each side when it has two or more.
    """
    rng = random.Random(seed)
    kept, held = [], []
    groups = _by_class(strata) if strata is not None else {0: list(range(n))}
    for _, indices in sorted(groups.items()):
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
    train_path: str,
    config,
    read_split: Callable[[str, str], Examples],
    strata: Callable[[Examples], list[int] | None],
    noun: str = "examples",
) -> Splits:
    """Train / validation / test from a pool and the optional split files.

    `read_split(path, split)` reads a validation or test file; `strata(examples)` gives each
    example's class for stratified splits and `data.k` (None: no classes, random splits).
    Held-out splits come out of the pool before `k` subsampling, so validation and test never
    share an example with training; for `bundled:` data the packaged test split is used when
    no test file is given.
    """
    notes = []
    how = "stratified" if strata(pool) is not None else "random"
    test_path = config.test or (train_path if train_path.startswith("bundled:") else None)
    if test_path:
        test = read_split(test_path, "test")
    else:
        kept, held = stratified_split(strata(pool), len(pool), config.test_fraction, config.seed)
        test, pool = pool.subset(held), pool.subset(kept)
        notes.append(f"test: {len(held)} {noun} held out of {train_path} ({how})")
    if config.validation:
        val, train = read_split(config.validation, "validation"), pool
    else:
        kept, held = stratified_split(strata(pool), len(pool), config.val_fraction, config.seed + 1)
        val, train = pool.subset(held), pool.subset(kept)
        notes.append(f"validation: {len(held)} {noun} held out of {train_path} ({how})")
    if config.k:
        classes = strata(train)
        if classes is None:
            raise TsuikaError(
                "data.k keeps k examples per class, and this task has no classes; "
                "leave data.k unset (or pass a smaller file)"
            )
        train = train.subset(take_k_per_class(classes, config.k, config.seed))
        notes.append(f"train: k={config.k} per class → {len(train)} {noun}")
    return Splits(train=train, val=val, test=test, notes=notes)
