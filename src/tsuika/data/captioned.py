"""Captioned images for teaching a text-to-image model a new concept.

A folder of images (a handful is usual), each captioned by, in this order: a `metadata.jsonl`
in the folder with `file_name` and `text` per line (the layout diffusers' training scripts
and Hugging Face image folders use), a `<image>.txt` beside the image (kohya's layout), or
else `diffusion.caption`, one template for all ("a photo of a <concept>"). `bundled:sneakers`
is the first images of the bundled Fashion-MNIST sneakers, a class the bundled text-to-image
model never saw. Unreadable images are skipped and named, as for image classification.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tsuika.data.formats import json_records, read_text_file
from tsuika.data.images import IMAGE_SUFFIXES, decode
from tsuika.data.splits import Examples
from tsuika.data.tables import BUNDLED
from tsuika.data.tables import _checked as text_checked
from tsuika.errors import TsuikaError

BUNDLED_CONCEPTS = {"bundled:sneakers": BUNDLED / "fashion" / "train" / "sneaker"}
BUNDLED_CLASS_WORDS = {"bundled:sneakers": "shoe"}
"""What kind of thing each bundled concept is (`diffusion.class_word` when unset)."""
BUNDLED_IMAGES = {"bundled:sneakers": 5}
"""How many of its images a bundled concept uses by default (`diffusion.images` when unset)."""
DEFAULT_CONCEPT = "bundled:sneakers"
METADATA = "metadata.jsonl"


@dataclass(frozen=True)
class CaptionedImage:
    """One training example: a decoded image (uint8 RGB [3, H, W]) and its caption."""

    image: torch.Tensor
    caption: str


def concept_class_of(path: str | None, classes: list[str]) -> str:
    """The judge's class a concept folder is, read from its name (`…/sneaker` → sneaker)."""
    name = concept_folder(path or DEFAULT_CONCEPT).name.lower()
    for candidate in (name, name.replace("-", " "), name.rstrip("s")):
        if candidate in classes:
            return candidate
    raise TsuikaError(
        f"which class of the judge is the concept in {path}? set diffusion.concept_class to "
        f"one of {', '.join(classes)} (or diffusion.judge=none for no scores)"
    )


def concept_folder(path: str, key: str = "data.train") -> Path:
    """The folder of pictures `path` names; `key`: the config key that gave it."""
    if path.startswith("bundled:"):
        if path not in BUNDLED_CONCEPTS:
            raise TsuikaError(
                f"unknown bundled concept data `{path}` (available: {', '.join(BUNDLED_CONCEPTS)})"
            )
        return BUNDLED_CONCEPTS[path]
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise TsuikaError(f"{folder}: not found; give a folder of images ({key}=<folder>)")
    return folder


def _metadata_captions(folder: Path) -> dict[str, str]:
    path = folder / METADATA
    if not path.is_file():
        return {}
    if not path.read_bytes().strip():
        return {}  # an empty metadata file captions nothing
    # The data reader's: bytes that are not UTF-8, JSON nested too deeply or a line that is
    # not an object are errors naming the file and line.
    rows, lines, _ = json_records(path, read_text_file(path))
    captions = {}
    for row, number in zip(rows, lines, strict=True):
        if not isinstance(row.get("file_name"), str):
            raise TsuikaError(f"{path}, line {number}: needs a `file_name` string")
        if not isinstance(row.get("text"), str):
            raise TsuikaError(f"{path}, line {number}: needs a `text` string (the caption)")
        # JSON can spell half a surrogate pair, which no tokenizer takes: refused here, before
        # any run folder, not when the first batch is encoded.
        captions[row["file_name"]] = text_checked(path, number, "text", row["text"])
    return captions


def _sidecar_caption(path: Path) -> str:
    """A `<image>.txt` caption; an empty one means none (the template captions the image)."""
    if not path.read_bytes().strip():
        return ""
    return read_text_file(path).strip()


def read_captioned_images(
    path: str,
    template: str,
    limit: int | None,
    max_pixels: int,
    problems: list[str],
    key: str = "data.train",
) -> Examples:
    """The concept's images (sorted by name; the first `limit` if given), decoded once, with
    their captions; unreadable files are left out and named in `problems`. `key`: the config
    key that names the folder (for the messages)."""
    folder = concept_folder(path, key)
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if limit is not None:
        files = files[:limit]
    captions = _metadata_captions(folder)
    unknown = sorted(set(captions) - {f.name for f in folder.iterdir()})
    if unknown:
        raise TsuikaError(f"{folder / METADATA}: names {unknown[0]}, which is not in the folder")
    inputs, names = [], []
    for file in files:
        try:
            image = decode(file, max_pixels)
        except ValueError as err:
            problems.append(f"{file}: {err}")
            continue
        sidecar = file.with_suffix(".txt")
        caption = captions.get(file.name)
        if caption is None and sidecar.is_file():
            caption = _sidecar_caption(sidecar)
        inputs.append(CaptionedImage(image, caption if caption else template))
        names.append(str(file))
    if not inputs:
        raise TsuikaError(f"{folder}: no readable images ({len(problems)} problems)")
    return Examples(inputs, {}, path, names=names)
