"""LoRA against full fine-tuning and the best `finetune` setting, on the bundled MiniLM and
reviews at 512 per class, in one run: trainable %, peak memory, seconds, accuracy.

    python bench/lora_text.py [--epochs 5]

Each configuration runs as its own `tsuika train` process, so the peak resident memory it
reports (`summary.json` → memory.peak_rss_mb) is that run's alone; `transfer` (nothing below
the head trains) shows the floor every run pays before training: Python, torch,
transformers, the model and the tokenised data. Targets (issue 14):
trainable ≤ 1 %, peak memory ≤ 0.6× full fine-tuning, accuracy within 1.5 points of it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Benches time cold runs: no frozen pass is read from the activation store.
os.environ.setdefault("TSUIKA_ACTIVATIONS", "off")


CONFIGS = {
    "lora r=8, all blocks": ["method=lora", "adapter.r=8"],
    "lora r=4, all blocks": ["method=lora", "adapter.r=4"],
    "lora r=8, query+value only": [
        "method=lora",
        "adapter.r=8",
        "adapter.target_modules=['*query','*value']",
    ],
    "lora r=8, no adapter dropout": ["method=lora", "adapter.r=8", "adapter.dropout=0"],
    "full fine-tuning": ["method=finetune", "finetune.freeze=0"],
    "transfer (nothing below the head trains: the floor)": ["method=transfer"],
    "finetune, 5 groups frozen (examples/finetune_text.yaml)": [
        "method=finetune",
        "finetune.freeze=5",
        "finetune.layer_decay=0.9",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    print(
        f"# bench/lora_text.py · {time.strftime('%Y-%m-%d')} · {platform.machine()} · "
        f"epochs {args.epochs}, k=512 per class, minilm-l6, bundled reviews"
    )
    output = Path(tempfile.mkdtemp())
    tsuika = str(Path(sys.executable).with_name("tsuika"))
    rows = {}
    for index, (label, overrides) in enumerate(CONFIGS.items()):
        name = f"run{index}"
        common = [
            "model=minilm-l6",
            "data.train=bundled:reviews",
            "data.k=512",
            f"train.epochs={args.epochs}",
            "train.patience=2",
            "train.backbone_lr=5e-5",
            "train.lr=1e-3",
            f"output={output}",
            f"name={name}",
            "progress=false",
            "baselines.classical=false",
            "baselines.probe=false",
        ]
        subprocess.run(
            [tsuika, "train", *common, *overrides], check=True, stdout=subprocess.DEVNULL
        )
        summary = json.loads((output / name / "summary.json").read_text())
        rows[label] = summary
        parameters, timings = summary["parameters"], summary["timings"]
        print(
            f"{label:58s} trainable {100 * parameters['trained'] / parameters['total']:6.2f} % "
            f"peak {summary['memory']['peak_rss_mb']:6.0f} MB  "
            f"{timings['total']:6.1f} s  accuracy {summary['test']['accuracy']:.4f}  "
            f"epochs {summary['training']['epochs_run']}"
        )
    full = rows["full fine-tuning"]
    for label, lora in rows.items():
        if not label.startswith("lora"):
            continue
        print(
            f"{label}: peak memory / full fine-tuning "
            f"{lora['memory']['peak_rss_mb'] / full['memory']['peak_rss_mb']:.2f} "
            "(target ≤ 0.6); accuracy − full fine-tuning "
            f"{100 * (lora['test']['accuracy'] - full['test']['accuracy']):+.1f} points "
            "(target ≥ −1.5)"
        )


if __name__ == "__main__":
    main()
