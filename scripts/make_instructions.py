"""Build the bundled instruction-tuning demo data of tsuika from the bundled movie reviews.

Reads ``src/tsuika/data/bundled/reviews/{train,test}.csv`` (columns ``text,label``) and
writes ``src/tsuika/data/bundled/instructions/{train,test}.jsonl``: one JSON object per
line, ``{"prompt": str, "completion": str}``, UTF-8, ``ensure_ascii=False``, ``\\n`` line
ends.  ``train.jsonl`` is built from ``reviews/train.csv`` only and ``test.jsonl`` from
``reviews/test.csv`` only, so no review text is shared between the two files; within a
file every review is used at most once.

Run from anywhere (standard library only, deterministic: ``random.Random(0)``; running
it twice gives byte-identical files)::

    .venv/bin/python scripts/make_instructions.py

Task mix (per file: 80 % sentiment, 20 % copy tasks split evenly over three types):

* ``sentiment`` - is the review positive or negative?  Completion: ``positive`` or
  ``negative`` (lower case, one word; classes balanced).  Prompts are built
  combinatorially: instruction sentence x way of referring to the review x optional
  answer-format sentence x review rendering (plain, in double quotes, after
  ``Review:``) x layout (review before or after the instruction).  Every prompt names
  both labels exactly once in its instruction part (either in the instruction sentence
  or in the answer-format sentence), so the answer space is always stated and neither
  label is singled out.
* copy tasks (the review is shown plain or after ``Review:``, never in added quotes):

  - ``first_three_words`` - the first three whitespace-separated words of the review,
    exactly as written (punctuation included);
  - ``last_word`` - the last whitespace-separated word with leading/trailing
    non-alphanumeric characters stripped (internal ones, e.g. in ``it's``, are kept);
  - ``last_three_words`` - the last three whitespace-separated words, exactly as written.

Only reviews of at most 200 characters are used (short prompts); copy tasks use only
reviews of at least 5 words whose last word keeps a letter or digit after stripping.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

SEED = 0
MAX_REVIEW_CHARS = 200
MIN_COPY_WORDS = 5
REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED = REPO_ROOT / "src" / "tsuika" / "data" / "bundled"
SRC_DIR = BUNDLED / "reviews"
OUT_DIR = BUNDLED / "instructions"

# rows per file: sentiment rows per class, rows per copy-task type
SPLITS = {
    "train": {"sentiment_per_class": 480, "per_copy_task": 80},  # 960 + 240 = 1,200
    "test": {"sentiment_per_class": 120, "per_copy_task": 20},  # 240 + 60 = 300
}
LABELS = ("positive", "negative")

# --- sentiment templates -------------------------------------------------------------
# {ref} is a way of referring to the review.  Instructions marked True name both labels and
# get an optional label-free format sentence; the others always get a format sentence that
# names both labels.
SENT_INSTRUCTIONS: list[tuple[str, bool]] = [
    ("Is {ref} positive or negative?", True),
    ("Classify the sentiment of {ref} as positive or negative.", True),
    ("Decide whether {ref} is positive or negative.", True),
    ("Tell me if {ref} is positive or negative.", True),
    ("Label {ref} as positive or negative.", True),
    ("Would you call {ref} positive or negative?", True),
    ("Is the sentiment of {ref} positive or negative?", True),
    ("Does {ref} express a positive or a negative opinion of the film?", True),
    ("What is the sentiment of {ref}?", False),
    ("Did the critic like the movie, judging by {ref}?", False),
    ("How does the critic feel about the film in {ref}?", False),
    ("Determine the overall tone of {ref}.", False),
    ("Classify {ref} by sentiment.", False),
    ("What opinion of the film does {ref} express?", False),
]
SENT_FORMATS_NAMING: list[str] = [
    "Answer positive or negative.",
    "Reply with positive or negative only.",
    "Answer with one word: positive or negative.",
    "Respond with either positive or negative.",
]
SENT_FORMATS_PLAIN: list[str] = [
    "",
    "Answer with one word.",
    "Give a one-word answer.",
    "Answer in lower case.",
]

# --- copy-task templates -------------------------------------------------------------
COPY_INSTRUCTIONS: dict[str, list[str]] = {
    "first_three_words": [
        "Copy the first three words of {ref}.",
        "Write out the first three words of {ref} exactly as they appear.",
        "What are the first three words of {ref}? Copy them exactly.",
        "Repeat the opening three words of {ref}, punctuation included.",
        "Give the first three words of {ref}, unchanged.",
    ],
    "last_word": [
        "What is the last word of {ref}? Give it without punctuation.",
        "Write the final word of {ref}, leaving out any punctuation.",
        "Which word ends {ref}? Answer with that word only, no punctuation.",
        "Give the last word of {ref} with punctuation removed.",
        "Copy the last word of {ref}, without any punctuation marks.",
    ],
    "last_three_words": [
        "Copy the last three words of {ref}.",
        "Write out the final three words of {ref} exactly as they appear.",
        "What are the last three words of {ref}? Copy them exactly.",
        "Repeat the closing three words of {ref}, punctuation included.",
        "Give the last three words of {ref}, unchanged.",
    ],
}
COPY_TASKS = tuple(COPY_INSTRUCTIONS)

# Ways of referring to the review, by where the review stands relative to the instruction.
REFS_REVIEW_AFTER = ["this review", "this movie review", "the following review", "the review below"]
REFS_REVIEW_BEFORE = ["this review", "this movie review", "the review above", "that review"]


def render_review(text: str, style: str) -> str:
    if style == "plain":
        return text
    if style == "quoted":
        return f'"{text}"'
    if style == "labelled":
        return f"Review: {text}"
    if style == "labelled_quoted":
        return f'Review: "{text}"'
    raise ValueError(style)


REVIEW_STYLES = ("plain", "quoted", "labelled", "labelled_quoted")
# Copy tasks never wrap the review in added quotes, so "exactly as written" is unambiguous.
COPY_REVIEW_STYLES = ("plain", "labelled")


def layout(rng: random.Random, instruction: str, review: str, review_first: bool) -> str:
    """Join instruction and rendered review; separator is a blank line or a newline."""
    sep = rng.choice(["\n\n", "\n"])
    return f"{review}{sep}{instruction}" if review_first else f"{instruction}{sep}{review}"


def sentiment_prompt(rng: random.Random, text: str) -> str:
    template, names_labels = rng.choice(SENT_INSTRUCTIONS)
    fmt = rng.choice(SENT_FORMATS_PLAIN if names_labels else SENT_FORMATS_NAMING)
    review_first = rng.random() < 0.5
    ref = rng.choice(REFS_REVIEW_BEFORE if review_first else REFS_REVIEW_AFTER)
    instruction = template.format(ref=ref)
    instruction = instruction[0].upper() + instruction[1:]
    if fmt:
        instruction = f"{instruction} {fmt}"
    review = render_review(text, rng.choice(REVIEW_STYLES))
    return layout(rng, instruction, review, review_first)


def strip_outer(word: str) -> str:
    """Strip leading and trailing characters that are not letters or digits."""
    start, end = 0, len(word)
    while start < end and not word[start].isalnum():
        start += 1
    while end > start and not word[end - 1].isalnum():
        end -= 1
    return word[start:end]


def copy_answer(task: str, text: str) -> str:
    words = text.split()
    if task == "first_three_words":
        return " ".join(words[:3])
    if task == "last_word":
        return strip_outer(words[-1])
    if task == "last_three_words":
        return " ".join(words[-3:])
    raise ValueError(task)


def copy_eligible(text: str) -> bool:
    words = text.split()
    return len(words) >= MIN_COPY_WORDS and strip_outer(words[-1]) != ""


def copy_prompt(rng: random.Random, task: str, text: str) -> str:
    template = rng.choice(COPY_INSTRUCTIONS[task])
    review_first = rng.random() < 0.5
    ref = rng.choice(REFS_REVIEW_BEFORE if review_first else REFS_REVIEW_AFTER)
    instruction = template.format(ref=ref)
    instruction = instruction[0].upper() + instruction[1:]
    review = render_review(text, rng.choice(COPY_REVIEW_STYLES))
    return layout(rng, instruction, review, review_first)


def read_reviews(path: Path) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = [(r["text"], r["label"]) for r in csv.DictReader(f)]
    bad = {label for _, label in rows} - set(LABELS)
    if bad:
        raise SystemExit(f"{path}: unexpected label(s) {sorted(bad)}")
    return rows


def build_split(
    rng: random.Random, rows: list[tuple[str, str]], spec: dict[str, int]
) -> list[dict[str, str]]:
    short = [(t, lab) for t, lab in rows if len(t) <= MAX_REVIEW_CHARS]
    by_class = {lab: [t for t, l2 in short if l2 == lab] for lab in LABELS}
    n_sent = spec["sentiment_per_class"]
    out: list[dict[str, str]] = []
    leftover: list[str] = []
    for lab in LABELS:
        pool = by_class[lab]
        rng.shuffle(pool)
        if len(pool) < n_sent:
            raise SystemExit(f"only {len(pool)} short {lab} reviews, need {n_sent}")
        for text in pool[:n_sent]:
            out.append({"prompt": sentiment_prompt(rng, text), "completion": lab})
        leftover.extend(pool[n_sent:])
    copy_pool = [t for t in leftover if copy_eligible(t)]
    rng.shuffle(copy_pool)
    n_copy = spec["per_copy_task"]
    if len(copy_pool) < n_copy * len(COPY_TASKS):
        raise SystemExit(f"only {len(copy_pool)} reviews left for copy tasks")
    for i, task in enumerate(COPY_TASKS):
        for text in copy_pool[i * n_copy : (i + 1) * n_copy]:
            out.append(
                {"prompt": copy_prompt(rng, task, text), "completion": copy_answer(task, text)}
            )
    rng.shuffle(out)
    return out


def main() -> None:
    rng = random.Random(SEED)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for split, spec in SPLITS.items():
        rows = read_reviews(SRC_DIR / f"{split}.csv")
        examples = build_split(rng, rows, spec)
        path = OUT_DIR / f"{split}.jsonl"
        with path.open("w", encoding="utf-8", newline="\n") as f:
            for ex in examples:
                f.write(json.dumps(ex, ensure_ascii=False) + "\n")
        print(f"{path.relative_to(REPO_ROOT)}: {len(examples)} rows, {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
