"""LoRA against full fine-tuning and the best `finetune` setting, on the bundled MiniLM and
reviews at 512 per class, in one run: trainable %, peak memory, seconds, accuracy.

    python bench/lora_text.py [--epochs 5]

Each configuration runs as its own `tsuika train` process, so the peak resident memory it
reports (`summary.json` → memory.peak_rss_mb) is that run's alone. Targets (issue 14):
trainable ≤ 1 %, peak memory ≤ 0.6× full fine-tuning, accuracy within 1.5 points of it.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "lora r=8, all blocks": ["method=lora", "adapter.r=8"],
    "full fine-tuning": ["method=finetune", "finetune.freeze=0"],
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
    lora, full = rows["lora r=8, all blocks"], rows["full fine-tuning"]
    print(
        f"peak memory LoRA / full fine-tuning: "
        f"{lora['memory']['peak_rss_mb'] / full['memory']['peak_rss_mb']:.2f} (target ≤ 0.6)"
    )
    print(
        f"accuracy LoRA − full fine-tuning: "
        f"{100 * (lora['test']['accuracy'] - full['test']['accuracy']):+.1f} points "
        "(target ≥ −1.5)"
    )


if __name__ == "__main__":
    main()
