"""Small data, side by side: tsuika's default recipe (`method: auto`) against the tools a
practitioner would pick instead, on the same examples, seeds and test split, in one run.

    python bench/small_data.py [--quick] [--seeds 3] [--part text|images|all]

Text (bundled movie reviews, all-MiniLM-L6-v2, the 2,000 bundled test reviews), k = 8, 64 and
512 examples per class drawn from the training file with each seed:
  * tsuika: `tsuika.train` with no method (the recipe chooses), baselines and report off;
  * LogisticRegression (scikit-learn defaults) on the frozen sentence embeddings;
  * SetFit 1.2 with its defaults (at k = 512 its pair count would run for hours here: its
    steps are capped, and the cap is printed beside its row);
  * Hugging Face Trainer, full fine-tuning (lr 5e-5, batch 16; 10 epochs at k = 8, else 3).
Images (bundled Fashion-MNIST, EfficientNet-Lite0 ImageNet weights, the 1,000 bundled test
images), 100 per class:
  * tsuika: `tsuika.train` with no method;
  * LogisticRegression on the frozen features (224 px, the model's own size);
  * naive full fine-tuning: a plain PyTorch loop, every layer trains, Adam 1e-4, batch 32,
    3 epochs at 224 px;
  * a naive frozen-backbone loop: plain PyTorch, the backbone frozen, a linear head with Adam
    1e-3, batch 32, 3 epochs, the features recomputed every epoch (no cache).

Training seconds: wall time from the model as loaded to the model ready to predict — the
feature extraction of a probe, SetFit's and Trainer's `train()`, tsuika's cache + the probe's
head (LP-FT) + fit (its per-epoch validation included; validation is 50 other examples per
class, and the recipe keeps the last epoch, so they only report). Model loading, tokenising
and the test pass are not counted, for any side. Peak memory: each side runs in its own
process (this script with `--side`); its `ru_maxrss`. Needs `pip install .[bench]` (SetFit,
datasets).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

# Benches time cold runs: no frozen pass is read from the activation store.
os.environ.setdefault("TSUIKA_ACTIVATIONS", "off")


ROOT = Path(__file__).resolve().parent.parent
TEXT_SIDES = ["tsuika", "logreg", "setfit", "hf-trainer"]
IMAGE_SIDES = ["tsuika", "logreg", "naive-finetune", "naive-frozen"]
SETFIT_CAP = 300
"""SetFit's steps at k = 512 (its default sampling would draw about a million pairs)."""


# -- data --------------------------------------------------------------------------------------
def review_rows(split: str) -> list[dict]:
    from tsuika.data import tables

    with open(tables.resolve("bundled:reviews", split), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def draw(rows: list[dict], key: str, k: int, seed: int, extra: int) -> tuple[list, list]:
    """k rows per class for training and `extra` other rows per class for validation."""
    rng = random.Random(seed)
    by_class: dict[str, list] = {}
    for row in rows:
        by_class.setdefault(row[key], []).append(row)
    train, val = [], []
    for label in sorted(by_class):
        chosen = rng.sample(by_class[label], k + extra)
        train += chosen[:k]
        val += chosen[k:]
    rng.shuffle(train)
    return train, val


def write_table(path: Path, rows: list[dict], columns: list[str]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([[r[c] for c in columns] for r in rows])
    return str(path)


def review_files(folder: Path, k: int, seed: int) -> dict[str, str]:
    """The text sides' draw as `data` settings: k reviews per class for training, 50 other
    ones per class for validation, the bundled test split — CSV files in `folder`."""
    train, val = draw(review_rows("train"), "label", k, seed, 50)
    columns = ["text", "label"]
    return {
        "train": write_table(folder / "train.csv", train, columns),
        "validation": write_table(folder / "val.csv", val, columns),
        "test": write_table(folder / "test.csv", review_rows("test"), columns),
    }


def image_rows(split: str) -> list[dict]:
    root = ROOT / "src" / "tsuika" / "data" / "bundled" / "fashion" / split
    return [
        {"path": str(p), "label": p.parent.name} for p in sorted(root.glob("*/*")) if p.is_file()
    ]


# -- one side, in its own process --------------------------------------------------------------
def side_text(side: str, k: int, seed: int, folder: Path) -> dict:
    import torch

    torch.manual_seed(seed)
    train, val = draw(review_rows("train"), "label", k, seed, 50)
    test = review_rows("test")
    labels = sorted({r["label"] for r in test})
    if side == "tsuika":
        return run_tsuika((train, val, test), "text", "minilm-l6", folder, seed)
    x_train = [r["text"] for r in train]
    y_train = [labels.index(r["label"]) for r in train]
    x_test = [r["text"] for r in test]
    y_test = np.array([labels.index(r["label"]) for r in test])
    model_path = minilm_path()
    if side == "logreg":
        from sentence_transformers import SentenceTransformer
        from sklearn.linear_model import LogisticRegression

        encoder = SentenceTransformer(str(model_path), device="cpu")
        started = time.perf_counter()
        features = encoder.encode(x_train, batch_size=32)
        probe = LogisticRegression().fit(features, y_train)
        seconds = time.perf_counter() - started
        predicted = probe.predict(encoder.encode(x_test, batch_size=64))
        return {"accuracy": float((predicted == y_test).mean()), "train_s": seconds}
    if side == "setfit":
        from datasets import Dataset
        from setfit import SetFitModel, Trainer, TrainingArguments

        model = SetFitModel.from_pretrained(str(model_path), local_files_only=True)
        settings = dict(seed=seed, report_to="none", output_dir=str(folder / "setfit"))
        args = TrainingArguments(**settings)
        note = ""
        if k >= 512:
            args = TrainingArguments(**settings, max_steps=SETFIT_CAP)
            note = f"steps capped at {SETFIT_CAP}"
        dataset = Dataset.from_dict({"text": x_train, "label": y_train})
        trainer = Trainer(model=model, args=args, train_dataset=dataset)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        predicted = np.asarray(model.predict(x_test, batch_size=64))
        return {"accuracy": float((predicted == y_test).mean()), "train_s": seconds, "note": note}
    if side == "hf-trainer":
        from datasets import Dataset
        from transformers import (
            AutoModelForSequenceClassification,
            AutoTokenizer,
            DataCollatorWithPadding,
            Trainer,
            TrainingArguments,
        )

        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
        epochs = 10 if k <= 8 else 3

        def tokenised(texts, targets):
            data = Dataset.from_dict({"text": texts, "label": targets})
            return data.map(
                lambda b: tokenizer(b["text"], truncation=True, max_length=128),
                batched=True,
                remove_columns=["text"],
            )

        args = TrainingArguments(
            output_dir=str(folder / "hf"),
            learning_rate=5e-5,
            per_device_train_batch_size=16,
            num_train_epochs=epochs,
            save_strategy="no",
            report_to="none",
            seed=seed,
            use_cpu=True,
            logging_strategy="no",
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=tokenised(x_train, y_train),
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        logits = trainer.predict(tokenised(x_test, y_test.tolist())).predictions
        predicted = logits.argmax(-1)
        return {
            "accuracy": float((predicted == y_test).mean()),
            "train_s": seconds,
            "note": f"{epochs} epochs",
        }
    raise SystemExit(f"unknown side {side}")


def run_tsuika(splits: tuple, column: str, model: str, folder: Path, seed: int) -> dict:
    """`tsuika train` with no method on the same rows as the other sides (as CSV files)."""
    import tsuika

    files = [
        write_table(folder / f"{name}.csv", rows, [column, "label"])
        for name, rows in zip(("train", "val", "test"), splits, strict=True)
    ]
    run = tsuika.train(
        model=model,
        data={
            "train": files[0],
            "validation": files[1],
            "test": files[2],
            "allow_outside_paths": True,
        },
        baselines={"majority": False, "classical": False, "probe": False},
        output=str(folder / "runs"),
        progress=False,
        report=False,
        seed=seed,
    )
    timings = run.summary["timings"]
    recipe = run.summary.get("recipe", {})
    return {
        "accuracy": run.summary["test"]["accuracy"],
        # Every part of the adaptation: the frozen prefix's cache, LP-FT's head, the fit.
        "train_s": sum(timings.get(part, 0.0) for part in ("cache", "head", "fit")),
        "note": f"{recipe.get('method')}, {run.summary['training']['epochs_run']} epochs"
        if "training" in run.summary and "epochs_run" in run.summary["training"]
        else recipe.get("method", ""),
    }


def minilm_path() -> Path:
    from tsuika.models import resolve_source

    return resolve_source("minilm-l6")[1]


def side_images(side: str, k: int, seed: int, folder: Path) -> dict:
    import torch

    torch.manual_seed(seed)
    train, val = draw(image_rows("train"), "label", k, seed, 20)
    test = image_rows("test")
    if side == "tsuika":
        return run_tsuika((train, val, test), "path", "efficientnet-lite0", folder, seed)
    return naive_images(side, train, test)


def naive_images(side: str, train: list[dict], test: list[dict]) -> dict:
    """The competitors on images, written as a practitioner would in plain PyTorch (and
    scikit-learn), on tsuika's loading of the same network and preprocessing at 224 px."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from torch import nn

    from tsuika.config import HeadConfig
    from tsuika.data.images import decode
    from tsuika.models import Request, load_model

    labels = sorted({r["label"] for r in test})
    model = load_model("efficientnet-lite0", Request(lambda width: nn.Identity(), HeadConfig()))
    body = model.num_stages - 1

    def batches(rows: list[dict], size: int, shuffle: bool):
        order = torch.randperm(len(rows)).tolist() if shuffle else list(range(len(rows)))
        for start in range(0, len(rows), size):
            chunk = [rows[i] for i in order[start : start + size]]
            images = [decode(Path(r["path"]), 10**8) for r in chunk]
            state = model.preprocess.collate(model.preprocess.encode(images))
            yield state, torch.tensor([labels.index(r["label"]) for r in chunk])

    def features(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        model.eval()
        out, ys = [], []
        with torch.no_grad():
            for state, y in batches(rows, 64, False):
                out.append(model(state, 0, body)["features"])
                ys.append(y)
        return torch.cat(out), torch.cat(ys)

    started = time.perf_counter()
    if side == "logreg":
        x, y = features(train)
        probe = LogisticRegression(max_iter=1000).fit(x.numpy(), y.numpy())
        seconds = time.perf_counter() - started
        x_test, y_test = features(test)
        accuracy = float((probe.predict(x_test.numpy()) == y_test.numpy()).mean())
        return {"accuracy": accuracy, "train_s": seconds, "note": "224 px"}
    head = nn.Linear(1280, len(labels))
    full = side == "naive-finetune"
    for p in model.parameters():
        p.requires_grad_(full)
    params = [*head.parameters(), *(model.parameters() if full else [])]
    optimizer = torch.optim.Adam(params, lr=1e-4 if full else 1e-3)
    for _ in range(3):
        for state, y in batches(train, 32, True):
            if full:
                model.train()
                pooled = model(state, 0, body)["features"]
            else:
                model.eval()
                with torch.no_grad():
                    pooled = model(state, 0, body)["features"]
            loss = nn.functional.cross_entropy(head(pooled), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - started
    x_test, y_test = features(test)
    with torch.no_grad():
        accuracy = float((head(x_test).argmax(-1) == y_test).float().mean())
    return {"accuracy": accuracy, "train_s": seconds, "note": "224 px, 3 epochs"}


def child(args: argparse.Namespace) -> None:
    torch_threads()
    with tempfile.TemporaryDirectory() as tmp:
        runner = side_text if args.part == "text" else side_images
        result = runner(args.side, args.k, args.seed, Path(tmp))
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def torch_threads() -> None:
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 2))


# -- the parent: every side, every k, every seed ------------------------------------------------
def run_side(part: str, side: str, k: int, seed: int) -> dict:
    command = [sys.executable, __file__, "--side", side, "--part", part, "--k", str(k)]
    command += ["--seed", str(seed)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT / "bench")
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (done.stderr or done.stdout)[-2000:]
    return {"error": tail}


def summarise(results: dict, part: str, k: int, sides: list[str]) -> list[str]:
    lines = []
    rows = {}
    for side in sides:
        runs = [r for r in results.get((part, side, k), []) if "error" not in r]
        if not runs:
            errors = [r["error"][-300:] for r in results.get((part, side, k), [])]
            lines.append(f"  {side:15s} failed: {errors[:1]}")
            continue
        acc = np.array([r["accuracy"] for r in runs])
        secs = np.array([r["train_s"] for r in runs])
        peak = max(r["peak_mb"] for r in runs)
        note = runs[0].get("note", "")
        rows[side] = (acc.mean(), secs.mean())
        lines.append(
            f"  {side:15s} {100 * acc.mean():5.1f} ± {100 * acc.std():3.1f} %  "
            f"{secs.mean():7.1f} s  peak {peak:6.0f} MB  (n={len(runs)}) {note}"
        )
    if "tsuika" in rows:
        ours_acc, ours_s = rows["tsuika"]
        for side, (acc, secs) in rows.items():
            if side != "tsuika":
                pace = "faster" if secs > ours_s else "slower"
                lines.append(
                    f"  tsuika vs {side:15s} accuracy {100 * (ours_acc - acc):+5.1f} points, "
                    f"time ×{ours_s / secs:.2f} ({max(secs, ours_s) / min(secs, ours_s):.1f}× "
                    f"{pace})"
                )
    return lines


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = {"text": axes[0], "images": axes[1]}
    colours = {}
    for (part, side, k), runs in sorted(results.items()):
        runs = [r for r in runs if "error" not in r]
        if not runs:
            continue
        axis = markers[part]
        x = np.mean([r["train_s"] for r in runs])
        y = 100 * np.mean([r["accuracy"] for r in runs])
        colour = colours.setdefault(side, f"C{len(colours)}")
        axis.scatter([x], [y], color=colour, label=side)
        axis.annotate(f"k={k}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for part, axis in markers.items():
        handles, labels = axis.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        axis.legend(unique.values(), unique.keys(), fontsize=8)
        axis.set_xscale("log")
        axis.set_xlabel("training seconds (2 CPU cores, log scale)")
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(
            "text: MiniLM-L6, movie reviews"
            if part == "text"
            else "images: EfficientNet-Lite0, Fashion-MNIST"
        )
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--part", default="all", choices=["text", "images", "all"])
    parser.add_argument("--ks", type=int, nargs="*", default=[8, 64, 512])
    parser.add_argument("--sides", nargs="*", help="only these sides (default: all)")
    parser.add_argument(
        "--results",
        default=str(ROOT / "bench" / "results" / "small_data.jsonl"),
        help="every run is appended here; the tables and the plot are drawn from this file "
        "(the newest run of each side, k and seed), so a part can be re-run alone",
    )
    parser.add_argument("--fresh", action="store_true", help="start a new results file")
    parser.add_argument(
        "--missing",
        action="store_true",
        help="skip each side, k and seed that already has a result in the results file",
    )
    parser.add_argument("--side")
    parser.add_argument("--k", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=str(ROOT / "docs" / "small_data.png"))
    args = parser.parse_args()
    if args.side:
        child(args)
        return
    seeds = range(1 if args.quick else args.seeds)
    import torch

    print(
        f"# bench/small_data.py · {date.today()} · {platform.machine()} · torch "
        f"{torch.__version__} · {torch.get_num_threads()} threads · seeds {list(seeds)}"
    )
    started = time.perf_counter()
    store = Path(args.results)
    store.parent.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        store.unlink(missing_ok=True)
    plan = []
    if args.part in ("text", "all"):
        plan += [("text", side, k) for k in args.ks for side in TEXT_SIDES]
    if args.part in ("images", "all"):
        plan += [("images", side, 100) for side in IMAGE_SIDES]
    plan = [p for p in plan if not args.sides or p[1] in args.sides]
    done = newest(store) if args.missing and store.exists() else {}
    for part, side, k in plan:
        finished = {r["seed"] for r in done.get((part, side, k), []) if "error" not in r}
        for seed in (s for s in seeds if s not in finished):
            result = run_side(part, side, k, seed)
            record = {"part": part, "side": side, "k": k, "seed": seed, "date": str(date.today())}
            with store.open("a", encoding="utf-8") as f:
                f.write(json.dumps({**record, **result}) + "\n")
            shown = {key: v for key, v in result.items() if key != "error"}
            print(f"{part} k={k} {side} seed {seed}: {shown or result['error'][-400:]}", flush=True)
    print()
    results = newest(store)
    for part, ks, sides in (("text", [8, 64, 512], TEXT_SIDES), ("images", [100], IMAGE_SIDES)):
        for k in ks:
            if any(key[0] == part and key[2] == k for key in results):
                print(f"{part}, k={k} per class (accuracy mean ± std over seeds, training s)")
                print("\n".join(summarise(results, part, k, sides)))
    plot(results, Path(args.plot))
    print(f"\nplot: {args.plot}; this run {time.perf_counter() - started:.0f} s")


def newest(store: Path) -> dict:
    """(part, side, k) → the newest result of each seed in the results file."""
    latest: dict = {}
    for line in store.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        latest[(row["part"], row["side"], row["k"], row["seed"])] = row
    results: dict = {}
    for (part, side, k, _), row in sorted(latest.items()):
        results.setdefault((part, side, k), []).append(row)
    return results


if __name__ == "__main__":
    main()
