"""Image classification data: an image folder (`root/<class>/*.png`) or a CSV/JSONL of
`path,label`, decoded once to RGB uint8 tensors, with bad files named and skipped.

Grayscale, palette, RGBA (composited on white) and CMYK images become RGB. A corrupt,
truncated, oversized or non-image file never stops training mid-epoch: every file is decoded
up front; by default bad ones are skipped with a warning and counted in the summary, and with
`data.strict: true` the first one is an error.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from tsuika.config import DataConfig
from tsuika.data.splits import Examples
from tsuika.data.tables import BUNDLED, read_table
from tsuika.errors import TsuikaError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
STORED_SHORT_SIDE = 320
"""Images are kept at most this large (shorter side): enough for 224–300 px crops."""


@dataclass
class Listing:
    """Image files with their targets (one list per column), and the problems found so far.
    A folder listing has one column, the class folder names, keyed ``FOLDER``."""

    paths: list[Path] = field(default_factory=list)
    targets: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


FOLDER = "folder"


def resolve_images(path: str, split: str) -> Path:
    if path.startswith("bundled:"):
        name = path.removeprefix("bundled:")
        found = BUNDLED / name / split
        if not found.is_dir():
            raise TsuikaError(f"unknown bundled image dataset `{name}` (available: fashion)")
        return found
    return Path(path).expanduser()


def _entries(folder: Path, listing: Listing) -> list[Path]:
    """Non-hidden entries of `folder`, sorted; an unreadable folder is a problem, not a crash."""
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as err:
        listing.problems.append(f"{folder}: cannot read the folder ({err.strerror})")
        return []


def _odd_entry(entry: Path) -> str | None:
    """Why a class-folder entry is not an image file to read, or None when it is a file."""
    if entry.is_dir():
        return "sub-folder ignored (images go directly in the class folder)"
    if entry.is_file():
        return None
    # exists() follows links: False for a dangling link and for a loop (ELOOP).
    if entry.is_symlink() and not entry.exists():
        return "broken link or link loop"
    return "not a regular file"  # a pipe, socket or device: reading it could block or hang


def _list_class(folder: Path, listing: Listing) -> None:
    files = []
    for entry in _entries(folder, listing):
        reason = _odd_entry(entry)
        if reason:
            listing.problems.append(f"{entry}: {reason}")
        elif entry.suffix.lower() not in IMAGE_SUFFIXES:
            listing.problems.append(f"{entry}: not an image file (suffix {entry.suffix!r})")
        else:
            files.append(entry)
    if not files:
        listing.problems.append(f"{folder}: empty class folder (class `{folder.name}` left out)")
    listing.paths += files
    listing.targets.setdefault(FOLDER, []).extend([folder.name] * len(files))


def list_folder(root: Path) -> Listing:
    """`root/<class>/<file>`: every sub-folder is a class, hidden files are ignored."""
    listing = Listing()
    try:
        entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    except OSError as err:
        raise TsuikaError(f"{root}: cannot read the folder ({err.strerror}); check it") from None
    classes = [p for p in entries if p.is_dir()]
    if not classes:
        raise TsuikaError(
            f"{root} has no class folders; lay images out as {root}/<class name>/<image>"
        )
    for entry in entries:
        # Files beside the class folders (a README, a labels file) are fine, but a dangling
        # link where a class folder should be would silently lose the class.
        if entry.is_symlink() and not entry.exists():
            listing.problems.append(f"{entry}: broken link or link loop (class left out)")
    for folder in classes:
        _list_class(folder, listing)
    return listing


def _inside(file: Path, folder: Path) -> bool:
    try:
        return file.resolve().is_relative_to(folder)
    except (OSError, RuntimeError, ValueError):  # 3.11 raises RuntimeError for a link loop
        return True  # cannot tell where it leads; decode will report it as unreadable


def list_table(
    path: Path, config: DataConfig, columns: list[str], label_key: str = "data.label_column"
) -> Listing:
    """A table of `path,<target columns>` rows; relative paths are relative to the table's
    folder, and (unless data.allow_outside_paths) must stay inside it, links followed."""
    table = read_table(path, config.image_column, columns, "data.image_column", label_key)
    listing = Listing(targets={column: [] for column in columns})
    folder = path.parent.resolve()
    for row, image in enumerate(table.texts):
        file = path.parent / image  # an absolute `image` replaces the folder
        if not config.allow_outside_paths and not _inside(file, folder):
            listing.problems.append(
                f"{file}: outside the data folder {folder}; "
                "set data.allow_outside_paths=true to allow it"
            )
            continue
        listing.paths.append(file)
        for column in columns:
            listing.targets[column].append(table.targets[column][row])
    return listing


def list_images(
    path: str,
    split: str,
    config: DataConfig,
    columns: list[str],
    label_key: str = "data.label_column",
) -> Listing:
    """An image folder (its class folders give the one target column) or a table."""
    source = resolve_images(path, split)
    if source.is_dir() and not columns:
        # Inputs without labels (distillation's unlabelled data): a flat folder of images, or
        # class folders whose names are not used.
        listing = Listing()
        if any(entry.is_dir() for entry in _entries(source, listing)):
            listing = list_folder(source)
        else:
            _list_class(source, listing)
        listing.targets = {}
        return listing
    if source.is_dir():
        if len(columns) != 1:
            raise TsuikaError(
                f"{source}: an image folder gives one label per image (its class folder); "
                f"for the columns {', '.join(columns)} use a CSV/JSONL of path,"
                f"{','.join(columns)}"
            )
        listing = list_folder(source)
        listing.targets = {columns[0]: listing.targets.get(FOLDER, [])}
        return listing
    if not source.exists():
        raise TsuikaError(f"image data {source} not found; give an image folder or a CSV/JSONL")
    return list_table(source, config, columns, label_key)


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


class _Refused(ValueError):
    """A file `decode` refuses with its own message (any other exception is PIL failing)."""


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise _Refused("a folder, not an image file")
    if not path.is_file():
        raise _Refused("not a regular file" if path.exists() else "file not found")


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise _Refused(f"empty image ({width}×{height} pixels)")
    if width * height > max_pixels:
        raise _Refused(
            f"too large ({width}×{height} pixels; limit data.max_image_pixels={max_pixels})"
        )


@contextmanager
def _pil_pixel_limit(limit: int | None) -> Iterator[None]:
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _read_rgb(path: Path, max_pixels: int) -> Image.Image:
    # PIL's bomb check fires inside Image.open, before the size can be read, and with PIL's
    # own limit: off while the header is read, so that ours decides (and names the size).
    # While decoding, PIL checks again frames or icon sizes larger than the header said:
    # there against our limit (`decode` makes its warning an error).
    with _pil_pixel_limit(None):
        image = Image.open(path)
    with image, _pil_pixel_limit(max_pixels):
        _check_size(*image.size, max_pixels)
        image.draft("RGB", (STORED_SHORT_SIDE, STORED_SHORT_SIDE))  # cheap JPEG downscale
        rgb = to_rgb(image)
    short = min(rgb.size)
    if short > STORED_SHORT_SIDE:
        scale = STORED_SHORT_SIDE / short
        size = (round(rgb.width * scale), round(rgb.height * scale))
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    return rgb


def decode(path: Path, max_pixels: int) -> torch.Tensor:
    """An image file → uint8 tensor [3, H, W]; raises ValueError saying what is wrong, and
    nothing else, whatever the file holds."""
    try:
        _check_file(path)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # PIL's notes on damaged metadata (corrupt EXIF, tags past the end of the file)
            # would be stray lines on stderr; a file it cannot read is a counted problem.
            warnings.simplefilter("ignore", UserWarning)
            array = np.asarray(_read_rgb(path, max_pixels), dtype=np.uint8).copy()
    except _Refused as err:
        raise ValueError(str(err)) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ValueError(
            f"too large when decoded (limit data.max_image_pixels={max_pixels})"
        ) from None
    # A user's file must never crash the run: PIL's decoders raise OSError, SyntaxError,
    # struct.error, EOFError, ZeroDivisionError, MemoryError… for damaged or absurd headers.
    except Exception as err:
        detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise ValueError(f"not a readable image ({detail})") from None
    return torch.from_numpy(array).permute(2, 0, 1)


def read_image_examples(
    path: str,
    split: str,
    config: DataConfig,
    columns: list[str],
    problems: list[str],
    label_key: str = "data.label_column",
) -> Examples:
    """Every image of a folder or table decoded once (RGB uint8), with its raw targets; an
    unreadable file is left out and named in `problems`."""
    listing = list_images(path, split, config, columns, label_key)
    problems.extend(listing.problems)
    images, kept = [], []
    for row, file in enumerate(listing.paths):
        try:
            images.append(decode(file, config.max_image_pixels))
            kept.append(row)
        except ValueError as err:
            problems.append(f"{file}: {err}")
    targets = {column: [values[i] for i in kept] for column, values in listing.targets.items()}
    names = [str(listing.paths[i]) for i in kept]
    return Examples(images, targets, path, names=names)


def decode_for_prediction(path: Path, max_pixels: int) -> torch.Tensor:
    """`decode` for files given to predict: a bad file is an error naming it, not a skip."""
    try:
        return decode(path, max_pixels)
    except ValueError as err:
        raise TsuikaError(f"{path}: {err}; fix, convert or remove this image") from None
