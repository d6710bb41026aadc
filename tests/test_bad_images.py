"""Awkward image files and folders: every bad file is a named, counted problem (a ValueError
from `decode`), tables of paths stay inside their folder, and no file content crashes a run."""

from __future__ import annotations

import io
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import classify_splits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tsuika.config import DataConfig
from tsuika.data.images import decode, decode_for_prediction
from tsuika.errors import TsuikaError

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def save_image(path: Path, value: int, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(value).integers(0, 255, (size, size, 3), np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def image_folder(root: Path, per_class: int = 6) -> Path:
    for c, name in enumerate(["red", "blue"]):
        for i in range(per_class):
            save_image(root / name / f"{i}.png", 10 * c + i)
    return root


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width`×`height` 8-bit grey pixels, with almost no data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def encoded(fmt: str, size: int = 12, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(size).integers(0, 255, (size, size, 3), np.uint8)
    Image.fromarray(pixels).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


# --- decode: anything but a good image is a ValueError ---------------------------------------


def test_pixel_bomb_is_too_large_not_a_crash(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 100_000  # 48 kB on disk, 400 million pixels
    with pytest.raises(ValueError, match=r"too large .*20000×20000.*max_image_pixels=1000000"):
        decode(bomb, 10**6)


def test_header_claiming_a_huge_image_is_too_large(tmp_path):
    path = tmp_path / "claims.png"
    path.write_bytes(png_header_only(100_000, 100_000))
    with pytest.raises(ValueError, match="too large"):
        decode(path, 40_000_000)


def test_the_configured_limit_replaces_pils_own(tmp_path, monkeypatch):
    # PIL refuses (not only warns about) images over twice its limit; ours is the one that counts.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    path = save_image(tmp_path / "a.png", 0, size=40)
    assert decode(path, 10**6).shape == (3, 40, 40)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored
    with pytest.raises(ValueError, match="too large"):
        decode(path, 1000)


UNREADABLE = r"^not a readable image \(\w+: "


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (png_header_only(0, 10), UNREADABLE),
        (png_header_only(2**31 - 1, 1), r"^too large \(2147483647×1 pixels; limit "),
        (b"BM" + b"\xff" * 60, UNREADABLE),
        (b"GIF89a" + b"\xff" * 20, UNREADABLE),
        (b"II*\x00" + b"\xff" * 40, UNREADABLE),
        (encoded("PNG")[:60], UNREADABLE),
        (encoded("JPEG")[:200], UNREADABLE),
    ],
    ids=["zero-width", "2^31-wide", "bmp-junk", "gif-junk", "tiff-junk", "png-cut", "jpeg-cut"],
)
def test_broken_files_are_value_errors(tmp_path, content, message):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        decode(path, 40_000_000)


def test_folder_and_overlong_name_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match=r"^a folder, not an image file$"):
        decode(tmp_path, 10**6)
    with pytest.raises(ValueError, match=UNREADABLE):
        decode(tmp_path / ("x" * 5000 + ".png"), 10**6)


def test_decode_for_prediction_names_the_file(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(20000, 20000))
    with pytest.raises(TsuikaError, match="max_image_pixels=1000") as err:
        decode_for_prediction(path, 1000)
    assert str(path) in str(err.value)
    good = save_image(tmp_path / "good.png", 1)
    assert decode_for_prediction(good, 1000).shape == (3, 16, 16)


# --- folders: every entry that is not an image is counted ------------------------------------


def skipped_for(root: Path, **extra) -> list[str]:
    return classify_splits(DataConfig(train=str(root), **extra), "image-encoder")[1].skipped


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda red: os.symlink(red / "loop.png", red / "loop.png"), "link loop"),
        (lambda red: os.symlink(red / "missing.png", red / "gone.png"), "broken link"),
        (lambda red: os.mkfifo(red / "pipe.png"), "not a regular file"),
        (lambda red: save_image(red / "deeper" / "x.png", 3), "sub-folder ignored"),
    ],
    ids=["symlink loop", "broken symlink", "fifo", "sub-folder"],
)
def test_odd_entries_in_a_class_folder_are_counted(tmp_path, make, expected):
    root = image_folder(tmp_path / "images")
    make(root / "red")
    skipped = skipped_for(root)
    assert len(skipped) == 1 and expected in skipped[0] and str(root / "red") in skipped[0]


def test_broken_link_as_a_class_folder_is_counted(tmp_path):
    root = image_folder(tmp_path / "images")
    os.symlink(tmp_path / "nowhere", root / "green")
    skipped = skipped_for(root)
    assert len(skipped) == 1 and "green" in skipped[0] and "broken link" in skipped[0]


def test_odd_entry_is_an_error_when_strict(tmp_path):
    root = image_folder(tmp_path / "images")
    os.symlink(root / "red" / "loop.png", root / "red" / "loop.png")
    with pytest.raises(TsuikaError, match=r"loop\.png"):
        skipped_for(root, strict=True)


# --- tables of paths stay in their folder unless allowed -------------------------------------


def path_table(tmp_path: Path, extra_rows: list[str]) -> Path:
    image_folder(tmp_path / "data" / "images")
    rows = [f"images/{c}/{i}.png,{c}" for c in ("red", "blue") for i in range(6)]
    table = tmp_path / "data" / "list.csv"
    table.write_text("\n".join(["path,label", *rows, *extra_rows]) + "\n")
    return table


def test_paths_outside_the_table_folder_are_refused(tmp_path):
    outside = save_image(tmp_path / "outside.png", 7)
    table = path_table(tmp_path, [f"{outside},red", "../outside.png,blue", "link.png,red"])
    os.symlink(outside, tmp_path / "data" / "link.png")
    _, splits = classify_splits(DataConfig(train=str(table)), "image-encoder")
    assert len(splits.train) + len(splits.val) + len(splits.test) == 12
    assert len(splits.skipped) == 3
    for line in splits.skipped:
        assert "outside the data folder" in line and "data.allow_outside_paths=true" in line
    assert str(tmp_path / "data") in splits.skipped[0]


def test_outside_paths_read_when_allowed(tmp_path):
    outside = save_image(tmp_path / "outside.png", 7)
    table = path_table(tmp_path, [f"{outside},red", "../outside.png,blue"])
    _, splits = classify_splits(
        DataConfig(train=str(table), allow_outside_paths=True), "image-encoder"
    )
    assert len(splits.train) + len(splits.val) + len(splits.test) == 14
    assert splits.skipped == []


def test_outside_path_is_not_opened(tmp_path, monkeypatch):
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(path) or real_open(path))
    table = path_table(tmp_path, ["/etc/hostname,red", "../../../etc/shadow,red"])
    classify_splits(DataConfig(train=str(table)), "image-encoder")
    assert not any("etc" in str(path) for path in opened)


def test_overlong_path_in_a_table_is_counted(tmp_path):
    table = path_table(tmp_path, ["x" * 5000 + ".png,red"])
    _, splits = classify_splits(DataConfig(train=str(table)), "image-encoder")
    assert len(splits.skipped) == 1 and "x" * 5000 in splits.skipped[0]


# --- properties: decode returns an RGB uint8 tensor or raises ValueError ---------------------

SAMPLES = {fmt: encoded(fmt) for fmt in ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]}
SAMPLES["PNG-RGBA"] = encoded("PNG", mode="RGBA")
SAMPLES["GIF-P"] = encoded("GIF", mode="P")


@st.composite
def damaged(draw) -> bytes:
    """A valid small image, maybe cut short, with up to three bytes overwritten."""
    data = bytearray(SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))])
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    # Half the changes hit the first 32 bytes, where the headers keep sizes and modes.
    where = st.integers(0, min(len(data), 32) - 1) | st.integers(0, len(data) - 1)
    for _ in range(draw(st.integers(0, 3)) if data else 0):
        data[draw(where)] = draw(st.integers(0, 255))
    return bytes(data)


FILES = st.one_of(damaged(), damaged(), damaged(), st.binary(max_size=200))


def check_decode(path: Path, max_pixels: int) -> None:
    try:
        tensor = decode(path, max_pixels)
    except ValueError:
        return
    assert tensor.dtype == torch.uint8 and tensor.ndim == 3 and tensor.shape[0] == 3
    assert tensor.shape[1] > 0 and tensor.shape[2] > 0


@settings(SETTINGS, max_examples=150)  # one small file each: cheap
@given(content=FILES, suffix=st.sampled_from([".png", ".jpg", ".gif", ".bin"]))
def test_any_file_decodes_or_raises_value_error(content, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"image{suffix}"
        path.write_bytes(content)
        check_decode(path, 40_000_000)


@SETTINGS
@given(files=st.lists(FILES, min_size=1, max_size=6), strict=st.booleans())
def test_any_folder_loads_or_raises_a_tsuika_error(tmp_path_factory, files, strict):
    root = image_folder(tmp_path_factory.mktemp("images"), per_class=3)
    for i, content in enumerate(files):
        (root / ["red", "blue"][i % 2] / f"fuzz{i}.png").write_bytes(content)
    try:
        _, splits = classify_splits(DataConfig(train=str(root), strict=strict), "image-encoder")
    except TsuikaError:
        return
    assert len(splits.train) > 0
