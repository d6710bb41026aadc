"""Transfer learning and fine-tuning on images: EfficientNet-Lite0 on bundled Fashion-MNIST.

    python bench/transfer_images.py [--finetune-images 256]

Prints:
  * the floor: one inference pass over every split's images (images/s), with the batching
    tsuika uses (batch 64, channels-last);
  * total `transfer` training time (feature caching for every split, the head solved on the
    cached features), its ratio to the floor (target ≤ 1.3×) and the test accuracy;
  * `finetune` samples/s of tsuika's loop versus a hand-written PyTorch loop on the same model,
    images, batches and settings (target ≥ 0.95);
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
from tsuika.feed.batches import sorted_batches, training_batches
from tsuika.methods import Finetune
from tsuika.models import Request, load_model
from tsuika.train.loop import fit
from tsuika.train.phase import seed_everything

# Benches time cold runs: no frozen pass is read from the activation store.
os.environ.setdefault("TSUIKA_ACTIVATIONS", "off")


@torch.no_grad()
def inference_seconds(model, examples) -> float:
    feed = input_feed(model, examples.inputs)
    started = time.perf_counter()
    for batch in feed.batches(sorted_batches([1] * len(feed), 64)):
        model.embed(batch.state)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--finetune-images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"# bench/transfer_images.py · {time.strftime('%Y-%m-%d')} · {platform.machine()} · "
        f"torch {torch.__version__} · {torch.get_num_threads()} threads"
    )
    config = load_config(None, {"model": "efficientnet-lite0"})
    task, splits = task_and_data(config)
    head = HeadConfig()  # the default head, as `train` builds it
    request = Request(lambda width: task.head(width, head), head)
    model = load_model("efficientnet-lite0", request).eval()
    inference_seconds(model, splits.train.subset(list(range(64))))  # warm-up
    # The floor: every split once through the network, as the run must (it caches the frozen
    # features of train, validation and test alike, then predicts the test split from them).
    floor = sum(inference_seconds(model, s) for s in (splits.train, splits.val, splits.test))
    n = len(splits.train)
    run = tsuika.train(
        method="transfer",  # this bench measures transfer; the default is the recipe
        model="efficientnet-lite0",
        baselines={"scratch": False},
        output="/tmp/tsuika-bench",
        progress=False,
    )
    t = run.summary["timings"]
    total = t["cache"] + t.get("head", 0.0) + t["fit"]
    print(f"\ntraining split: {n} images (+{len(splits.val)} validation), 10 classes")
    every = n + len(splits.val) + len(splits.test)
    print(f"floor: one pass over every split       {floor:7.2f} s  ({every / floor:6.1f} images/s)")
    print(
        f"transfer total: cache + head + fit      {total:7.2f} s  "
        f"(cache {t['cache']:.2f} s, head {t.get('head', 0.0):.2f} s, fit {t['fit']:.2f} s, "
        f"{run.summary['training']['epochs_run']} epochs)"
    )
    print(f"ratio total / floor                     {total / floor:7.2f}×  (target ≤ 1.3×)")
    print(
        f"transfer test accuracy (n={run.summary['data']['test']})      "
        f"{run.summary['test']['accuracy']:.4f}"
    )

    cfg = load_config(
        None,
        {
            "model": "efficientnet-lite0",
            "method": "finetune",
            "train": {"epochs": 1, "patience": None, "cache": "off"},
        },
    )
    few = splits.train.subset(list(range(args.finetune_images)))
    val = splits.val.subset(list(range(32)))
    # Each loop runs on a freshly loaded model; the two alternate `--repeats` times and each
    # one's fastest run counts (this machine's timings vary by ±15% from run to run).
    plain_runs, our_runs = [], []
    for _ in range(args.repeats):
        seed_everything(0)
        model = load_model("efficientnet-lite0", request)
        Finetune(cfg, task).prepare(model)
        feed = input_feed(model, few.inputs, task.targets(few))
        val_feed = input_feed(model, val.inputs, task.targets(val))
        order = training_batches(len(feed), 32, 0, 1)
        plain_runs.append(plain_pytorch_epoch(model, feed, cfg.train.backbone_lr, order, val_feed))
        seed_everything(0)
        model = load_model("efficientnet-lite0", request)
        method = Finetune(cfg, task)
        method.prepare(model)
        our_runs.append(fit(model, method, feed, val_feed, cfg.train, seed=0).seconds)
    plain, ours = min(plain_runs), min(our_runs)
    m = args.finetune_images
    print(f"\nfull fine-tuning, {m} images, batch 32, 1 epoch")
    print(f"plain PyTorch loop   {m / plain:7.1f} samples/s")
    print(
        f"tsuika loop          {m / ours:7.1f} samples/s  (both include a 32-image validation pass)"
    )
    print(f"ratio tsuika / plain {plain / ours:7.3f}  (target ≥ 0.95)")
    print(
        f"all runs (s): plain {[round(t, 1) for t in plain_runs]}, "
        f"tsuika {[round(t, 1) for t in our_runs]}"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak:.0f} MB")


if __name__ == "__main__":
    main()
