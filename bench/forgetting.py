"""Forgetting on the bundled reviews (issue 18): full fine-tuning of MiniLM-L6 at a high
learning rate, with the party-convention sentences (`bundled:speeches`) as the retain set,
plain and with each remedy.

    python bench/forgetting.py [--k 512] [--lr 3e-4] [--l2sp 0.1,1] [--lwf 1] [--seed 0]

Every run: `method: finetune`, `freeze: 0` (every layer trains), `train.backbone_lr` = --lr,
3 epochs, batches of 32, the last epoch kept; training data k reviews per class drawn from
the bundled train split, 50 other ones per class for validation, the 2,000 bundled test
reviews. The retain score is a 5-fold logistic-regression probe on the pooled features of the
1,000 retain sentences, measured before training, after every epoch and for the kept model;
the verdict compares the kept model with the pretrained one sentence by sentence (paired
bootstrap, 95 %). The first row is the default rate (3e-5) for reference.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from small_data import review_files

import tsuika

# Benches time cold runs: no frozen pass is read from the activation store.
os.environ.setdefault("TSUIKA_ACTIVATIONS", "off")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--l2sp", default="0.1,1")
    parser.add_argument("--lwf", default="1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(
        f"# bench/forgetting.py · {date.today()} · {platform.machine()} · torch {torch.__version__}"
    )
    print(
        f"# k={args.k} per class, seed {args.seed}, full fine-tuning, 3 epochs, "
        "retain bundled:speeches"
    )
    folder = Path(tempfile.mkdtemp())
    data = {**review_files(folder, args.k, args.seed), "retain": "bundled:speeches"}
    sides = [] if args.no_reference else [("reference, default rate", 3e-5, {})]
    sides.append(("high rate", args.lr, {}))
    sides += [(f"high rate + l2sp {w:g}", args.lr, {"l2sp": w}) for w in _floats(args.l2sp)]
    sides += [(f"high rate + lwf {w:g}", args.lr, {"lwf": w}) for w in _floats(args.lwf)]
    print(
        "| run | backbone lr | test accuracy | retain accuracy before → kept (change, 95 % "
        "interval) | verdict | per epoch | seconds |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, rate, remedy in sides:
        started = time.perf_counter()
        run = tsuika.train(
            model="minilm-l6",
            method="finetune",
            data=data,
            finetune={"freeze": 0, **remedy},
            train={
                "epochs": 3,
                "batch_size": 32,
                "backbone_lr": rate,
                "select": "last",
                "patience": None,
            },
            baselines={"majority": False, "classical": False, "probe": False},
            output=str(folder / "runs"),
            progress=False,
            report=False,
            seed=args.seed,
        )
        seconds = time.perf_counter() - started
        found = run.summary["forgetting"]
        low, high = found["interval"]
        curve = ", ".join(f"{point['score']:.3f}" for point in found["curve"])
        print(
            f"| {name} | {rate:g} | {run.summary['test']['accuracy']:.4f} | "
            f"{found['pretrained']:.3f} → {found['kept']:.3f} ({found['change']:+.3f}, "
            f"{low:+.3f} to {high:+.3f}) | {found['verdict']} | {curve} | {seconds:.0f} |",
            flush=True,
        )


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


if __name__ == "__main__":
    main()
