"""Image classification data: an image folder (`root/<class>/*.png`) or a CSV/JSONL of
`path,label`, decoded once to RGB uint8 tensors, with bad files named and skipped.

Grayscale, palette, RGBA (composited on white) and CMYK images become RGB. A corrupt,
truncated, oversized or non-image file never stops training mid-epoch: every file is decoded
up front; by default bad ones are skipped with a warning and counted in the summary, and with
`data.strict: true` the first one is an error.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from tsuika.config import DataConfig
from tsuika.data.splits import Examples, Splits, assemble_splits, check_classes, label_names
from tsuika.data.tables import BUNDLED, read_table
from tsuika.errors import TsuikaError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
STORED_SHORT_SIDE = 320
"""Images are kept at most this large (shorter side): enough for 224–300 px crops."""


@dataclass
class Listing:
    """Image files with their labels, and the problems found so far."""

    paths: list[Path] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def resolve_images(path: str, split: str) -> Path:
    if path.startswith("bundled:"):
        name = path.removeprefix("bundled:")
        found = BUNDLED / name / split
        if not found.is_dir():
            raise TsuikaError(f"unknown bundled image dataset `{name}` (available: fashion)")
        return found
    return Path(path).expanduser()


def list_folder(root: Path) -> Listing:
    """`root/<class>/<file>`: every sub-folder is a class, hidden files are ignored."""
    listing = Listing()
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise TsuikaError(
            f"{root} has no class folders; lay images out as {root}/<class name>/<image>"
        )
    for folder in classes:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            listing.problems.append(
                f"{folder}: empty class folder (class `{folder.name}` left out)"
            )
        for file in files:
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                listing.problems.append(f"{file}: not an image file (suffix {file.suffix!r})")
                continue
            listing.paths.append(file)
            listing.labels.append(folder.name)
    return listing


def list_table(path: Path, config: DataConfig) -> Listing:
    table = read_table(path, config.image_column, config.label_column)
    listing = Listing()
    for image, label in zip(table.texts, table.labels, strict=True):
        file = Path(image)
        listing.paths.append(file if file.is_absolute() else path.parent / file)
        listing.labels.append(label)
    return listing


def list_images(path: str, split: str, config: DataConfig) -> Listing:
    source = resolve_images(path, split)
    if source.is_dir():
        return list_folder(source)
    if not source.exists():
        raise TsuikaError(f"image data {source} not found; give an image folder or a CSV/JSONL")
    return list_table(source, config)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → RGB; transparency is composited on white, not on black."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, image).convert("RGB")
    if image.mode.startswith("I"):  # 16/32-bit grayscale: rescale to 8 bits
        array = np.asarray(image, dtype=np.float64)
        span = max(array.max() - array.min(), 1e-9)
        image = Image.fromarray(((array - array.min()) / span * 255).astype(np.uint8))
    return image.convert("RGB")


def decode(path: Path, max_pixels: int) -> torch.Tensor:
    """An image file → uint8 tensor [3, H, W]; raises ValueError saying what is wrong."""
    if not path.is_file():
        raise ValueError("file not found")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ValueError(
                    f"too large ({width}×{height} pixels; limit data.max_image_pixels={max_pixels})"
                )
            image.draft("RGB", (STORED_SHORT_SIDE, STORED_SHORT_SIDE))  # cheap JPEG downscale
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                rgb = to_rgb(image)
    except (OSError, SyntaxError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"not a readable image ({type(err).__name__}: {err})") from None
    short = min(rgb.size)
    if short > STORED_SHORT_SIDE:
        scale = STORED_SHORT_SIDE / short
        rgb = rgb.resize(
            (round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.BICUBIC
        )
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)


def decode_listing(listing: Listing, config: DataConfig) -> tuple[list[torch.Tensor], list[str]]:
    images, labels = [], []
    for path, label in zip(listing.paths, listing.labels, strict=True):
        try:
            images.append(decode(path, config.max_image_pixels))
            labels.append(label)
        except ValueError as err:
            listing.problems.append(f"{path}: {err}")
    return images, labels


def _examples(images, labels, names, source, problems) -> Examples:
    index = {name: i for i, name in enumerate(names)}
    kept = [i for i, label in enumerate(labels) if label in index]
    unknown = sorted({label for label in labels if label not in index})
    for label in unknown:
        count = sum(1 for x in labels if x == label)
        problems.append(
            f"{source}: class `{label}` does not occur in training ({count} images left out)"
        )
    return Examples([images[i] for i in kept], [index[labels[i]] for i in kept], source)


def load_image_splits(config: DataConfig) -> Splits:
    """Decode every image once; held-out splits are taken before `k` subsampling."""
    train_path = config.train or "bundled:fashion"
    listing = list_images(train_path, "train", config)
    images, labels = decode_listing(listing, config)
    problems = listing.problems
    if config.strict and problems:
        raise TsuikaError(f"{problems[0]} (data.strict is on; fix or remove the file)")
    if not images:
        raise TsuikaError(f"{train_path}: no readable images ({len(problems)} problems)")
    names = label_names(labels)
    check_classes(names, train_path)

    def read_split(path: str, split: str) -> Examples:
        listing = list_images(path, split, config)
        split_images, split_labels = decode_listing(listing, config)
        problems.extend(listing.problems)
        return _examples(split_images, split_labels, names, path, problems)

    splits = assemble_splits(
        _examples(images, labels, names, train_path, problems),
        names,
        train_path,
        config,
        read_split,
        noun="images",
    )
    if config.strict and problems:
        raise TsuikaError(f"{problems[0]} (data.strict is on; fix or remove the file)")
    if not len(splits.test) or not len(splits.val):
        raise TsuikaError(f"{train_path}: no images left for validation or test")
    splits.skipped = problems
    return splits
