"""Data for a run: read the files, let the task encode the targets, split, and for images,
skip and count what cannot be read. Bad input fails here, before anything is written."""

from __future__ import annotations

from typing import Protocol

from tsuika.config import DataConfig
from tsuika.data.chat import read_chat_examples
from tsuika.data.images import read_image_examples
from tsuika.data.splits import Examples, Splits, assemble_splits
from tsuika.data.text import read_text_examples
from tsuika.errors import TsuikaError

DEFAULT_DATA = {
    "text": "bundled:reviews",
    "image": "bundled:fashion",
    "chat": "bundled:instructions",
}
"""Data used when `data.train` is unset, by input kind (`chat`: prompt → completion)."""


class TargetCodec(Protocol):
    """What a task does to targets (see `tsuika.tasks.base.Task`)."""

    def learn(self, pool: Examples) -> None: ...
    def encode(self, raw: Examples, problems: list[str] | None = None) -> Examples: ...
    def strata(self, examples: Examples) -> list[int] | None: ...
    def fit(self, train: Examples) -> None: ...


def read_examples(
    modality: str,
    path: str,
    split: str,
    config: DataConfig,
    columns: list[str],
    problems: list[str],
    label_key: str = "data.label_column",
) -> Examples:
    """Raw examples of one file or folder: texts, prompts with completions (`chat`), or
    decoded images (bad ones in `problems`). `label_key`: the setting that names `columns`,
    for the message when one is missing."""
    if modality == "image":
        return read_image_examples(path, split, config, columns, problems, label_key)
    if modality == "chat":
        return read_chat_examples(path, split)
    return read_text_examples(path, split, config, columns, label_key)


def load_splits(
    config: DataConfig, modality: str, columns: list[str], codec: TargetCodec
) -> Splits:
    """Train / validation / test with encoded targets. Images that cannot be used are
    skipped and named (`data.strict` makes the first an error); texts are never skipped."""
    if modality == "captioned-images":  # a few pictures of a concept; the task makes the rest
        return codec.concept_splits(config)
    images = modality == "image"
    problems: list[str] = []
    skip = problems if images else None
    train_path = config.train or DEFAULT_DATA[modality]

    def strict_check() -> None:
        if config.strict and problems:
            raise TsuikaError(f"{problems[0]} (data.strict is on; fix or remove the file)")

    def read(path: str, split: str) -> Examples:
        return read_examples(modality, path, split, config, columns, problems)

    raw = read(train_path, "train")
    strict_check()
    if images and not len(raw):
        raise TsuikaError(f"{train_path}: no readable images ({len(problems)} problems)")
    codec.learn(raw)
    splits = assemble_splits(
        codec.encode(raw, skip),
        train_path,
        config,
        lambda path, split: codec.encode(read(path, split), skip),
        codec.strata,
        noun="images" if images else "examples",
    )
    strict_check()
    if images and (not len(splits.test) or not len(splits.val)):
        raise TsuikaError(f"{train_path}: no images left for validation or test")
    splits.skipped = problems
    codec.fit(splits.train)
    return splits
