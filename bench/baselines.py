"""What the baselines cost next to the run they judge, on the bundled models and data.

    python bench/baselines.py [--scratch]

Runs the text demo (MiniLM transfer, 256 reviews per class), the image demo (EfficientNet-Lite0
transfer, 50 Fashion-MNIST images per class) and `examples/finetune_text.yaml` (MiniLM,
blocks 5–6 fine-tuned, 512 per class) with the default baselines — majority class, a classical
model without pretraining, and for fine-tuning the linear probe — and prints each part's
seconds and the baselines' share of the whole run (target ≤ 10 %). With `--scratch`, also the
same network from scratch on a budget matched to the run's FLOPs, for comparison with the old
default (10 epochs from scratch).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import tsuika
from tsuika.config import load_config

# Benches time cold runs: no frozen pass is read from the activation store.
os.environ.setdefault("TSUIKA_ACTIVATIONS", "off")


RUNS = {
    "text demo (transfer, k=256)": dict(
        model="minilm-l6", method="transfer", data={"train": "bundled:reviews", "k": 256}
    ),
    "image demo (transfer, k=50)": dict(
        model="efficientnet-lite0", method="transfer", data={"train": "bundled:fashion", "k": 50}
    ),
    "examples/finetune_text.yaml": "examples/finetune_text.yaml",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scratch", action="store_true", help="also the matched scratch run")
    args = parser.parse_args()
    print(
        f"{time.strftime('%Y-%m-%d')} · {platform.processor() or platform.machine()} · "
        f"torch {torch.__version__} · {torch.get_num_threads()} threads"
    )
    output = Path(tempfile.mkdtemp())
    for label, settings in RUNS.items():
        from_file = isinstance(settings, str)
        config = load_config(settings).model_dump() if from_file else dict(settings)
        config.update(output=str(output), progress=False)
        if args.scratch:
            config["baselines"] = {**config.get("baselines", {}), "scratch": True}
        run = tsuika.train(config)
        summary = run.summary
        timings, baselines = summary["timings"], summary["baselines"]
        total = timings["total"]
        default = sum(v["seconds"] for name, v in baselines.items() if name != "scratch")
        without_scratch = total - baselines.get("scratch", {}).get("seconds", 0.0)
        parts = ", ".join(f"{name} {values['seconds']:.2f}s" for name, values in baselines.items())
        metric = summary["selection"]["metric"]
        scores = ", ".join(f"{name} {values[metric]:.3f}" for name, values in baselines.items())
        print(
            f"\n{label}: run {without_scratch:.1f}s with the default baselines "
            f"{default:.2f}s = {100 * default / without_scratch:.1f} % of it ({parts})"
        )
        print(f"  test {metric}: run {summary['test'][metric]:.3f}; {scores}")
        print(f"  verdict: {summary['verdicts']['transfer']['text']}")
        if "scratch" in baselines:
            scratch = baselines["scratch"]
            print(
                f"  scratch: {scratch['epochs']} epochs ({scratch['budget']}), "
                f"{scratch['seconds']:.1f}s = {100 * scratch['seconds'] / without_scratch:.0f} % "
                "of the run without it"
            )


if __name__ == "__main__":
    main()
