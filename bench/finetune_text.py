"""Fine-tuning on text: tsuika's loop versus a plain PyTorch loop, and the frozen-prefix cache.

    python bench/finetune_text.py [--examples 1024] [--epochs 3]

Prints, for the bundled minilm-l6 and movie-review data:
  * training samples/s of tsuika's loop and of a hand-written PyTorch loop on the same model,
    the same batches (length-bucketed, same order) and settings (AdamW, warmup+cosine,
    clipping), full fine-tuning; their ratio (target ≥ 0.95);
  * epoch time with and without the frozen-prefix cache for embeddings + 4 of 6 blocks frozen
    (`finetune.freeze=5`), and the speed-up (target ≥ 2×);
  * peak resident memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import torch
from plain_loop import plain_pytorch_epoch

import tsuika
from tsuika.api import task_and_data
from tsuika.config import HeadConfig, load_config
from tsuika.feed import input_feed
from tsuika.feed.batches import training_batches
from tsuika.methods import Finetune
from tsuika.models import Request, load_model
from tsuika.train.loop import fit
from tsuika.train.phase import seed_everything

# Benches time cold runs: no frozen pass is read from the activation store.
os.environ.setdefault("TSUIKA_ACTIVATIONS", "off")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"# bench/finetune_text.py · {time.strftime('%Y-%m-%d')} · {platform.machine()} · "
        f"torch {torch.__version__} · {torch.get_num_threads()} threads"
    )
    config = load_config(
        None, {"method": "finetune", "train": {"epochs": 1, "patience": None, "cache": "off"}}
    )
    task, splits = task_and_data(config)
    head = HeadConfig()  # the default head, as `train` builds it
    request = Request(lambda width: task.head(width, head), head)
    train = splits.train.subset(list(range(args.examples)))
    val = splits.val.subset(list(range(64)))

    # 1. Loop overhead: one epoch of full fine-tuning, same batches, both loops. Each loop
    # runs on a freshly loaded model; they alternate `--repeats` times and each one's fastest
    # run counts (this machine's timings vary by ±10–15% from run to run).
    plain_runs, our_runs = [], []
    for _ in range(args.repeats):
        seed_everything(0)
        model = load_model("minilm-l6", request)
        method = Finetune(config, task)
        method.prepare(model)
        feed = input_feed(model, train.inputs, task.targets(train))
        val_feed = input_feed(model, val.inputs, task.targets(val))
        order = training_batches(len(feed), 32, 0, 1, feed.lengths)
        plain_runs.append(
            plain_pytorch_epoch(model, feed, config.train.backbone_lr, order, val_feed)
        )
        seed_everything(0)
        model = load_model("minilm-l6", request)
        method.prepare(model)
        our_runs.append(fit(model, method, feed, val_feed, config.train, seed=0).seconds)
    plain, ours = min(plain_runs), min(our_runs)
    print(f"\nfull fine-tuning, {args.examples} examples, batch 32, 1 epoch")
    print(f"plain PyTorch loop   {args.examples / plain:7.1f} samples/s")
    print(f"tsuika loop          {args.examples / ours:7.1f} samples/s")
    print("(both include the same 64-example validation pass)")
    print(f"ratio tsuika / plain {plain / ours:7.3f}  (target ≥ 0.95)")
    print(
        f"all runs (s): plain {[round(t, 1) for t in plain_runs]}, "
        f"tsuika {[round(t, 1) for t in our_runs]}"
    )

    # 2. Frozen-prefix cache: embeddings + 4 of 6 blocks frozen, and + 5 of 6.
    for freeze in (5, 6):
        prefix_cache(args, freeze)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak:.0f} MB")


def prefix_cache(args: argparse.Namespace, freeze: int) -> None:
    """Epoch time with and without the frozen-prefix cache. By the cost model (training a
    block ≈ 3× its forward pass) the ceiling is (frozen + 3·trained) / (3·trained) blocks."""
    trained = 7 - freeze
    ceiling = (freeze - 1 + 3 * trained) / (3 * trained)
    print(
        f"\nfinetune.freeze={freeze} (embeddings + blocks 1-{freeze - 1} frozen), "
        f"{args.examples} examples, {args.epochs} epochs; cost-model ceiling {ceiling:.2f}×"
    )
    times = {}
    for cache in ("off", "auto"):
        run = tsuika.train(
            method="finetune",
            data={"k": args.examples // 2},
            finetune={"freeze": freeze},
            train={"epochs": args.epochs, "patience": None, "cache": cache},
            baselines={"scratch": False},
            output="/tmp/tsuika-bench",
            progress=False,
        )
        t = run.summary["timings"]
        times[cache] = t
        print(
            f"cache={cache:4}  epoch {t['fit'] / args.epochs:6.2f} s   "
            f"cache build {t.get('cache', 0):6.2f} s   "
            f"test accuracy {run.summary['test']['accuracy']:.4f}"
        )
    speedup = times["off"]["fit"] / times["auto"]["fit"]
    total = times["off"]["fit"] / (times["auto"]["fit"] + times["auto"].get("cache", 0))
    print(
        f"epoch speed-up with the prefix cache {speedup:5.2f}×  (target ≥ 2×); "
        f"including the one-off cache build: {total:.2f}× over {args.epochs} epochs"
    )


if __name__ == "__main__":
    main()
