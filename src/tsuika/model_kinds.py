"""The kind of model tsuika adapts: one word, `model_kind`, and this one vocabulary.

    text-encoder    a transformers text model whose pooled features feed a new head
    image-encoder   an image network (bundled, timm, torchvision, registered), likewise
    causal-lm       a transformers decoder that keeps its own pretrained LM head
    text-to-image   a diffusion pipeline that draws what a prompt says

A task and a method declare the kinds they adapt (`model_kinds`); a model's name says which
kinds it can be (`tsuika.models.model_kinds_of`: a transformers text model is adapted as an
encoder or as a causal LM, whichever the task adapts); a run records the kind it was built as
(`model_kind` in meta.json's `model`, and in summary.json). What the data is follows from the
kind (`tsuika.data.reading`): a text-encoder reads tables of texts, an image-encoder images,
a causal-lm prompt → completion JSONL, a text-to-image model a few pictures of a concept.

Here, below every other layer, because the data layer reads files by kind too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

TEXT_ENCODER = "text-encoder"
IMAGE_ENCODER = "image-encoder"
CAUSAL_LM = "causal-lm"
TEXT_TO_IMAGE = "text-to-image"

MODEL_KINDS = (TEXT_ENCODER, IMAGE_ENCODER, CAUSAL_LM, TEXT_TO_IMAGE)
"""Every kind, in the order a choice between two is made (a text model is an encoder first)."""
ENCODERS = frozenset({TEXT_ENCODER, IMAGE_ENCODER})
"""The kinds whose pooled features feed a new head."""
TEXT_MODELS = frozenset({TEXT_ENCODER, CAUSAL_LM})
"""What a transformers text model can be adapted as: its pooled features for a new head, or
its own next-token predictions."""


def in_order(kinds: Iterable[str]) -> list[str]:
    """`kinds` in vocabulary order (a plugin's own kinds after, alphabetically)."""
    kinds = set(kinds)
    return [kind for kind in MODEL_KINDS if kind in kinds] + sorted(kinds - set(MODEL_KINDS))


def first_kind(kinds: Iterable[str]) -> str | None:
    """The kind a model that can be several is built as where nothing asks for another
    (None: no kind)."""
    ordered = in_order(kinds)
    return ordered[0] if ordered else None


def kinds_in_words(kinds: Iterable[str], article: bool = False) -> str:
    """`kinds` for a message: `text-encoder or causal-lm`; with `article`: `an
    image-encoder`."""
    words = " or ".join(in_order(kinds))
    if not article:
        return words
    return f"{'an' if words[:1] in ('a', 'e', 'i', 'o', 'u') else 'a'} {words}"


BEFORE_ISSUE_32 = {
    "text": TEXT_ENCODER,
    "image": IMAGE_ENCODER,
    CAUSAL_LM: CAUSAL_LM,
    TEXT_TO_IMAGE: TEXT_TO_IMAGE,
}
"""The words runs written before issue 32 recorded (meta.json `model.family`, summary.json
`modality`) → model kind."""


def recorded_model_kind(record: Mapping[str, Any]) -> str | None:
    """The kind of model a run recorded: `model_kind` in meta.json's `model` object, or in
    summary.json. The one reader of the older words: a run written before issue 32 has
    meta.json `model.family` (text, image, causal-lm, text-to-image) or summary.json
    `modality` (text, image, text-to-image; a causal LM's run said `text` there, read as
    text-encoder). None: the record names no kind."""
    kind = record.get("model_kind")
    if isinstance(kind, str) and kind in MODEL_KINDS:
        return kind
    for older in ("family", "modality"):
        word = record.get(older)
        if isinstance(word, str) and word in BEFORE_ISSUE_32:
            return BEFORE_ISSUE_32[word]
    return None
