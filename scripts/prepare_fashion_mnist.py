"""Build the bundled Fashion-MNIST image-folder demo data of tsuika.

Source: the IDX files of Fashion-MNIST (Zalando Research, MIT licence; see
``src/tsuika/data/bundled/fashion/NOTICE``), e.g. from the Debian package::

    apt-get install dataset-fashion-mnist    # -> /usr/share/datasets/fashion-mnist/

(the bundled copy was made from dataset-fashion-mnist 0.0~git20200523.55506a9-1), then run
from the repository root::

    python scripts/prepare_fashion_mnist.py /usr/share/datasets/fashion-mnist

The directory must hold ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``).
Needs numpy and Pillow.

For every class, 150 images of the official training set and 100 of the official test set
are drawn without replacement with ``random.Random(0)`` (classes in label order, train
before test) and written as 8-bit grayscale PNG (``optimize=True``) to
``<out>/train/<class>/<index>.png`` and ``<out>/test/<class>/<index>.png``, where
``<index>`` is the image's zero-padded position in the official IDX file.  Existing
``train/`` and ``test/`` folders under ``<out>`` are replaced.  The script fails if the
PNG files together exceed 2,000,000 bytes.
"""

from __future__ import annotations

import argparse
import gzip
import random
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SEED = 0
CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)
SPLITS = (("train", "train", 150), ("test", "t10k", 100))  # (folder, IDX prefix, per class)
SIZE_LIMIT = 2_000_000
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "src" / "tsuika" / "data" / "bundled" / "fashion"


def read_idx(directory: Path, name: str) -> np.ndarray:
    """Read an (optionally gzipped) IDX file of unsigned bytes."""
    for path in (directory / name, directory / f"{name}.gz"):
        if path.exists():
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rb") as f:
                data = f.read()
            break
    else:
        raise SystemExit(f"{directory}: neither {name} nor {name}.gz found")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise SystemExit(f"{name}: not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="directory with the Fashion-MNIST IDX files")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    rng = random.Random(SEED)
    total = 0
    for folder, prefix, per_class in SPLITS:
        images = read_idx(args.source, f"{prefix}-images-idx3-ubyte")
        labels = read_idx(args.source, f"{prefix}-labels-idx1-ubyte")
        if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
            raise SystemExit(f"{prefix}: unexpected shapes {images.shape}, {labels.shape}")
        width = len(str(len(labels) - 1))
        split_dir = args.out_dir / folder
        if split_dir.exists():
            shutil.rmtree(split_dir)
        for label, name in enumerate(CLASSES):
            candidates = np.flatnonzero(labels == label).tolist()
            chosen = sorted(rng.sample(candidates, per_class))
            class_dir = split_dir / name
            class_dir.mkdir(parents=True)
            for index in chosen:
                path = class_dir / f"{index:0{width}d}.png"
                Image.fromarray(images[index]).save(path, format="PNG", optimize=True)
                total += path.stat().st_size
        print(f"{folder}: {per_class} per class x {len(CLASSES)} classes", file=sys.stderr)

    print(f"PNG files: {total} bytes (limit {SIZE_LIMIT})", file=sys.stderr)
    if total > SIZE_LIMIT:
        raise SystemExit("size limit exceeded: reduce the per-class counts in SPLITS")


if __name__ == "__main__":
    main()
