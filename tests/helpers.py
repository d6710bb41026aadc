"""Plain helpers shared by the tests: the toy vocabulary and data, fast configs, run folders."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE_WORDS = ["good", "great", "excellent", "wonderful", "superb", "lovely", "brilliant"]
POSITIVE_WORDS += ["delightful", "charming", "fantastic", "moving", "beautiful"]
NEGATIVE_WORDS = ["bad", "awful", "terrible", "boring", "dull", "poor", "horrible", "tedious"]
NEGATIVE_WORDS += ["messy", "clumsy", "weak", "ugly"]
FILLER_WORDS = ["the", "a", "this", "that", "movie", "film", "story", "plot", "acting", "cast"]
FILLER_WORDS += ["was", "is", "very", "really", "quite", "and", "but", "so", "with", "of", "it"]
FILLER_WORDS += ["one", "ending", "music", "scenes", "director", "script", "overall", "truly"]
FILLER_WORDS += ["rather", "too", "just", "simply", "an", "show", "drama"]
VOCAB = SPECIAL_TOKENS + POSITIVE_WORDS + NEGATIVE_WORDS + FILLER_WORDS

Row = tuple[str, str]


def sentiment_rows(n: int = 40, seed: int = 0) -> list[Row]:
    """`n` (text, label) rows alternating `pos` / `neg`: three filler words and three sentiment
    words each, so the classes are separable by vocabulary alone."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = POSITIVE_WORDS if label == "pos" else NEGATIVE_WORDS
        text = rng.sample(FILLER_WORDS, 3) + rng.sample(words, 3)
        rng.shuffle(text)
        rows.append((" ".join(text), label))
    return rows


def csv_text(rows: list[Row], header: tuple[str, str] = ("text", "label"), sep: str = ",") -> str:
    lines = [sep.join(header)] + [f"{text}{sep}{label}" for text, label in rows]
    return "\n".join(lines) + "\n"


def jsonl_text(rows: list[Row]) -> str:
    return "".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows)


def fast_config(
    model_dir: Path, train_file: Path, output: Path, **overrides: Any
) -> dict[str, Any]:
    """A config dict for a run of about a second on the tiny BERT. Dict overrides update
    their section (`train={"epochs": 2}` keeps the other `train` keys)."""
    config: dict[str, Any] = {
        "model": str(model_dir),
        "method": "transfer",
        "data": {"train": str(train_file)},
        "train": {"epochs": 5, "batch_size": 8, "lr": 0.05, "patience": None},
        # These runs exercise the loop (epochs, checkpoints, resume, logs): the head trains by
        # steps. The closed-form head, `transfer`'s default, has its own tests.
        "head": {"fit": "steps"},
        "baselines": {"scratch": False, "bootstrap": 200},
        "output": str(output),
        "progress": False,
        # Charts cost more than these runs' training; the report's own tests turn it on.
        "report": False,
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            config[key] = {**config.get(key, {}), **value}
        else:
            config[key] = value
    return config


def run_folders(output: Path) -> list[Path]:
    """The run folders under `output` (none when it does not exist)."""
    return sorted(p for p in output.iterdir() if p.is_dir()) if output.exists() else []


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path, with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def classifier(name: str, classes: int, pretrained: bool = True, weights: str | None = None):
    """The model `name` ending in a new linear head with `classes` outputs (what a
    classification run on `classes` labels builds), without reading any data."""
    from tsuika.config import HeadConfig
    from tsuika.models import Request, load_model
    from tsuika.models.heads import Head

    def new_head(width: int) -> Head:
        return Head(width, classes)

    return load_model(name, Request(new_head, HeadConfig(), pretrained=pretrained, weights=weights))


def classify_splits(data, model_kind: str = "text-encoder", columns: tuple[str, ...] = ("label",)):
    """(task, splits) of a classification task on `data` (a DataConfig), read for a model of
    `model_kind`, encoded and split as a run does; the class names are `task.labels[column]`."""
    from tsuika.data.reading import load_splits
    from tsuika.tasks import Classify

    task = Classify(list(columns))
    return task, load_splits(data, model_kind, task.columns, task)
