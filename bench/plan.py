"""`tsuika plan` at k = 64 per class on the bundled reviews, against each single strategy run
with its defaults (issue 18): is the plan's pick at least the best single default minus 1
point on test?

    python bench/plan.py [--budget 5m] [--seed 0]

The data are small_data.py's: 64 training reviews per class, 50 other ones per class for
validation, the 2,000 bundled test reviews. Single strategies: `tsuika train` with
`method: transfer`, `finetune`, `lora` and `auto` (the small-data recipe), nothing else set.
Each side runs in this process, one after the other; seconds are each run's total.
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
from tsuika.plan import parse_budget, plan

# Benches time cold runs: no frozen pass is read from the activation store.
os.environ.setdefault("TSUIKA_ACTIVATIONS", "off")


SINGLE = ("transfer", "finetune", "lora", "auto")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", default="5m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--singles", default=",".join(SINGLE))
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"# bench/plan.py · {date.today()} · {platform.machine()} · torch {torch.__version__}")
    print(f"# k={args.k} per class, seed {args.seed}, budget {args.budget}")
    folder = Path(tempfile.mkdtemp())
    data = review_files(folder, args.k, args.seed)
    common = {
        "model": "minilm-l6",
        "data": data,
        "output": str(folder / "runs"),
        "progress": False,
        "report": False,
        "seed": args.seed,
    }
    started = time.perf_counter()
    result = plan(common, budget_seconds=parse_budget(args.budget))
    seconds = time.perf_counter() - started
    for trial in result["trials"]:
        score = "" if trial["score"] is None else f"{trial['score']:.3f}"
        print(
            f"  trial {trial['strategy']:42s} {trial['state']:14s} val {score:6s} "
            f"epochs {trial['epochs']:2d} steps {trial['steps']:4d} {trial['seconds']:6.1f} s"
        )
    search = result["spent"]["seconds"]
    print(
        f"plan: {result['best']} · test accuracy {result['test']['accuracy']:.4f} · search "
        f"{search:.0f} s + final run {seconds - search:.0f} s"
    )
    print(f"  {result['explanation']}")
    best_single = None
    for method in [m for m in args.singles.split(",") if m]:
        started = time.perf_counter()
        run = tsuika.train(common, method=method)
        accuracy, took = run.summary["test"]["accuracy"], time.perf_counter() - started
        print(f"single {method:9s} test accuracy {accuracy:.4f} in {took:.0f} s")
        best_single = max(best_single or accuracy, accuracy)
    if best_single is not None:
        margin = result["test"]["accuracy"] - best_single
        verdict = "met" if margin >= -0.01 else "missed"
        print(f"plan − best single default: {100 * margin:+.1f} points ({verdict}: ≥ −1 point)")


if __name__ == "__main__":
    main()
