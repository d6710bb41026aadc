"""Data for a run: read the files, let the task encode the targets, split, and for images,
skip and count what cannot be read. Bad input fails here, before anything is written.

What the files hold follows from the kind of model they train (`tsuika.model_kinds`): a
text-encoder reads tables of texts, an image-encoder images, a causal-lm prompt → completion
JSONL, a text-to-image model a few pictures of a concept."""

from __future__ import annotations

from typing import Protocol

from tsuika.config import DataConfig
from tsuika.data.chat import read_chat_examples
from tsuika.data.images import read_image_examples
from tsuika.data.splits import Examples, Splits, assemble_splits
from tsuika.data.text import read_text_examples
from tsuika.errors import TsuikaError
from tsuika.model_kinds import CAUSAL_LM, IMAGE_ENCODER, TEXT_ENCODER, TEXT_TO_IMAGE

DEFAULT_DATA = {
    TEXT_ENCODER: "bundled:reviews",
    IMAGE_ENCODER: "bundled:fashion",
    CAUSAL_LM: "bundled:instructions",
}
"""Data used when `data.train` is unset, by the kind of model it trains."""


class TargetCodec(Protocol):
    """What a task does to targets (see `tsuika.tasks.base.Task`)."""

    def learn(self, pool: Examples) -> None: ...
    def encode(self, raw: Examples, problems: list[str] | None = None) -> Examples: ...
    def strata(self, examples: Examples) -> list[int] | None: ...
    def fit(self, train: Examples) -> None: ...


def read_examples(
    model_kind: str,
    path: str,
    split: str,
    config: DataConfig,
    columns: list[str],
    problems: list[str],
    label_key: str = "data.label_column",
) -> Examples:
    """Raw examples of one file or folder, as a model of `model_kind` reads them: decoded
    images (bad ones in `problems`), prompts with completions (a causal LM), or texts.
    `label_key`: the setting that names `columns`, for the message when one is missing."""
    if model_kind == IMAGE_ENCODER:
        return read_image_examples(path, split, config, columns, problems, label_key)
    if model_kind == CAUSAL_LM:
        return read_chat_examples(path, split)
    return read_text_examples(path, split, config, columns, label_key)


def load_splits(
    config: DataConfig, model_kind: str, columns: list[str], codec: TargetCodec
) -> Splits:
    """Train / validation / test with encoded targets, for a model of `model_kind`. Images
    that cannot be used are skipped and named (`data.strict` makes the first an error); texts
    are never skipped."""
    if model_kind == TEXT_TO_IMAGE:  # a few pictures of a concept; the task makes the rest
        return codec.concept_splits(config)
    images = model_kind == IMAGE_ENCODER
    problems: list[str] = []
    skip = problems if images else None
    train_path = config.train or DEFAULT_DATA[model_kind]

    def strict_check() -> None:
        if config.strict and problems:
            raise TsuikaError(f"{problems[0]} (data.strict is on; fix or remove the file)")

    def read(path: str, split: str) -> Examples:
        return read_examples(model_kind, path, split, config, columns, problems)

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
