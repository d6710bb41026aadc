"""Transfer learning on text: cost against its floor, accuracy against LogisticRegression.

    python bench/transfer_text.py [--seeds 3]

Prints, for the bundled minilm-l6 and movie-review data:
  * the floor: one inference pass over every split (train, validation, test; tsuika's
    batching: length-sorted, dynamic padding), and sentence-transformers' `encode` over the
    training texts for reference;
  * the total training time of `transfer` (feature caching for every split, then the head
    solved on the cache) and its ratio to the floor (target ≤ 1.3×);
  * accuracy at k=64 per class of tsuika's head versus scikit-learn's LogisticRegression on
    the same frozen embeddings (target: within 1 point), averaged over several k-shot draws;
  * peak resident memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

import tsuika
from tsuika.api import task_and_data
from tsuika.config import HeadConfig, load_config
from tsuika.feed import input_feed
from tsuika.feed.batches import sorted_batches
from tsuika.models import BUNDLED, Request, load_model
from tsuika.train.phase import seed_everything

# Benches time cold runs: no frozen pass is read from the activation store.
os.environ.setdefault("TSUIKA_ACTIVATIONS", "off")


@torch.no_grad()
def embed_all(model, examples, batch_size: int = 64) -> tuple[np.ndarray, float]:
    """Pooled features in input order, and the seconds one inference pass took."""
    feed = input_feed(model, examples.inputs)
    started = time.perf_counter()
    out = [None] * len(feed)
    for batch in feed.batches(sorted_batches(feed.lengths, batch_size)):
        for i, row in zip(batch.indices, model.embed(batch.state), strict=True):
            out[i] = row
    return torch.stack(out).numpy(), time.perf_counter() - started


def sentence_transformers_seconds(texts: list[str]) -> float:
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(BUNDLED["minilm-l6"].folder()), device="cpu")
    encoder.encode(texts[:64], batch_size=64)  # warm-up
    started = time.perf_counter()
    encoder.encode(texts, batch_size=64)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--k", type=int, default=64)
    args = parser.parse_args()
    print(
        f"# bench/transfer_text.py · {time.strftime('%Y-%m-%d')} · {platform.machine()}"
        f" · torch {torch.__version__} · {torch.get_num_threads()} threads"
    )

    # 1. Cost: the whole training pool (no k), floor versus transfer's training time.
    config = load_config(None, {"data": {"train": "bundled:reviews"}})
    task, splits = task_and_data(config)
    head = HeadConfig()  # the default head, as `train` builds it
    model = load_model("minilm-l6", Request(lambda w: task.head(w, head), head)).eval()
    embed_all(model, splits.train.subset(list(range(64))))  # warm-up
    _, floor_train = embed_all(model, splits.train)
    # The floor: every split once through the network, as the run must (it caches the frozen
    # features of train, validation and test alike, then predicts the test split from them).
    floor = floor_train + sum(embed_all(model, s)[1] for s in (splits.val, splits.test))
    st_seconds = sentence_transformers_seconds(splits.train.inputs)
    run = tsuika.train(
        method="transfer",  # this bench measures transfer; the default is the recipe
        data={"train": "bundled:reviews"},
        baselines={"majority": True, "scratch": False},
        output="/tmp/tsuika-bench",
        progress=False,
    )
    timings = run.summary["timings"]
    total = timings["cache"] + timings.get("head", 0.0) + timings["fit"]
    n = len(splits.train)
    print(f"\ntraining split: {n} texts (+{len(splits.val)} validation)")
    every = n + len(splits.val) + len(splits.test)
    speed = n / floor_train
    print(f"one inference pass over train           {floor_train:7.2f} s  ({speed:6.0f} texts/s)")
    print(
        f"sentence-transformers encode (same)    {st_seconds:7.2f} s  "
        f"(tsuika's pass is {st_seconds / floor_train:.2f}× faster)"
    )
    print(f"floor: one pass over every split       {floor:7.2f} s  ({every} texts)")
    print(
        f"transfer total: cache + head + fit      {total:7.2f} s  "
        f"(cache {timings['cache']:.2f} s, head {timings.get('head', 0.0):.2f} s, "
        f"fit {timings['fit']:.2f} s, "
        f"{run.summary['training']['epochs_run']} epochs)"
    )
    print(f"ratio total / floor                     {total / floor:7.2f}×  (target ≤ 1.3×)")
    print(f"full-pool test accuracy                 {run.summary['test']['accuracy']:.4f}")

    # 2. Accuracy at k per class: tsuika's head vs LogisticRegression on the same embeddings.
    test_x, _ = embed_all(model, splits.test)
    test_y = np.array(splits.test.targets["label"])
    ours, theirs = [], []
    for seed in range(args.seeds):
        run = tsuika.train(
            method="transfer",  # this bench measures transfer; the default is the recipe
            data={"train": "bundled:reviews", "k": args.k, "seed": seed},
            baselines={"scratch": False},
            output="/tmp/tsuika-bench",
            progress=False,
            seed=seed,
        )
        cfg = load_config(None, {"data": {"k": args.k, "seed": seed}})
        _, few = task_and_data(cfg)
        seed_everything(seed)
        train_x, _ = embed_all(model, few.train)
        logreg = LogisticRegression(max_iter=5000).fit(train_x, few.train.targets["label"])
        theirs.append(float((logreg.predict(test_x) == test_y).mean()))
        ours.append(run.summary["test"]["accuracy"])
        print(
            f"k={args.k} seed {seed}: tsuika transfer {ours[-1]:.4f}   "
            f"LogisticRegression {theirs[-1]:.4f}"
        )
    gap = 100 * (np.mean(ours) - np.mean(theirs))
    print(
        f"k={args.k} mean over {args.seeds} draws: tsuika {np.mean(ours):.4f}, "
        f"LogisticRegression {np.mean(theirs):.4f}, difference {gap:+.2f} points "
        "(target: within 1 point)"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak:.0f} MB")


if __name__ == "__main__":
    main()
