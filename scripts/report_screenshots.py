"""Screenshots of a run report and a comparison for the README (docs/*.png).

    .venv/bin/python scripts/report_screenshots.py [OUTPUT_FOLDER]

Trains the text demo (MiniLM, 256 reviews per class, transfer) and a fine-tuning run on the
same data, builds their reports and a comparison, and photographs the top of each page in
headless Chromium (Debian's `chromium`)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import FLAGS, chromium

import tsuika
from tsuika.report.compare import write_comparison

DOCS = Path(__file__).resolve().parents[1] / "docs"


def screenshot(page: Path, target: Path, height: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium(),
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={target}",
                f"--window-size=1000,{height}",
                page.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    print(f"wrote {target}")


def main() -> None:
    output = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
    data = {"train": "bundled:reviews", "k": 256}
    common = dict(model="minilm-l6", data=data, output=str(output), progress=False)
    transfer = tsuika.train(method="transfer", name="transfer", **common)
    finetune = tsuika.train(
        method="finetune",
        name="finetune",
        finetune={"freeze": 4},
        train={"epochs": 4},
        **common,
    )
    DOCS.mkdir(exist_ok=True)
    screenshot(transfer.path / "report.html", DOCS / "report.png", 2300)
    page, _ = write_comparison([transfer.path, finetune.path], output / "compare.html")
    screenshot(page, DOCS / "compare.png", 1200)


if __name__ == "__main__":
    main()
