"""Real, imbalanced data (issue 30: "on real, imbalanced data the transfer head collapses"):
`method: transfer` — its head solved in closed form on the frozen, cached features, classes
weighed and C chosen on macro-F1 when they are imbalanced — against the old gradient-trained
head and against scikit-learn's logistic regression on the very same features, side by side
in one run, on the same rows, seeds and test splits.

    python bench/real_data.py [--seeds 3] [--part text|images|all]

Text (bundled movie reviews, all-MiniLM-L6-v2), drawn from the bundled files with each seed
(seeds 0, 1, 2; CSV files in a temporary folder):
  * `short 7:1`: 600 training reviews (525 positive, 75 negative), 700 test reviews at 7:1;
  * `short 20:1`: 600 training (571 / 29), 700 test at 20:1;
  * `long 7:1`: every text is 5 reviews of one label joined by a space (about 90 words,
    120-130 tokens: longer than the old 128-token cut), 600 training at 7:1, 180 test at 7:1
    (the test file's 1,000 positive reviews hold 158 × 5);
  * `balanced`: 600 training (300 / 300), 700 test balanced — the control.
Sides, for every variant and seed:
  1. `tsuika transfer`: `tsuika.train(method="transfer")` with its defaults (`head.fit:
     convex`, `train.balance: auto`);
  2. `transfer (old)`: the same with `head.fit: steps`, `train.balance: none` — the old head;
  3. `sklearn C=1`: `LogisticRegression(C=1, max_iter=1000)` on the pooled frozen features
     as tsuika computes them (`pooled_features`, the run's `train.max_length`), all 600
     training rows;
  4. `sklearn balanced`: the same with `class_weight="balanced"`;
  5. `tsuika default`: `tsuika.train` with no method (the recipe fine-tunes) — `short 7:1`
     and `long 7:1`, seed 0 only (it is the slow one);
  6. the planted crippled head on `short 7:1`, seed 0: `head.fit: steps`, 1 epoch at lr
     1e-4, the probe baseline on — its transfer verdict should read "HEAD UNDERFIT".
The tables also show the majority-class and classical (text: TF-IDF + logistic regression;
images: logistic regression on pixels) baselines of each
`tsuika transfer` run. tsuika carves its validation split out of the 600 training rows (its
transfer head fits on the rest); the scikit-learn sides fit on all 600.
Cost (`--part cost`): the default recipe (`tsuika.train` with no method) on 200, 500 and
1,000 training texts of 3 reviews each (~60 words) at 7:1, seed 0: the estimate printed
before the run against the measured wall time of the whole call.
Images (`--part images`; bundled Fashion-MNIST, EfficientNet-Lite0 at 128 px): training
`trouser` 150, `bag` 25, `sandal` 7 (21:1), tested on the 100 bundled test images of each of
the three classes; sides 1-4.

Per side: test accuracy, macro-F1, the share of the test set given to the most predicted
class (`predictions.jsonl`), wall seconds (a tsuika side: the whole `tsuika.train` call; a
scikit-learn side: feature extraction + fit), tsuika's transfer verdict. The checks of the
issue, per variant on the means over seeds: transfer accuracy ≥ sklearn C=1 − 0.5 points;
transfer macro-F1 ≥ sklearn balanced − 0.01; most predicted class ≤ 95 % of the test set
when the majority class is under 80 % of it. Every (variant, seed, side) is appended as one
JSON line to bench/results/real_data.jsonl.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import tempfile
import time
import traceback
from collections import Counter
from datetime import date, datetime
from pathlib import Path

import numpy as np
from small_data import review_rows, write_table

# Benches time cold runs: no frozen pass is read from the activation store.
os.environ.setdefault("TSUIKA_ACTIVATIONS", "off")


ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "bench" / "results" / "real_data.jsonl"

TEXT_VARIANTS = {
    # name: (texts joined per example, (train positive, negative), (test positive, negative))
    "short 7:1": (1, (525, 75), (612, 88)),
    "short 20:1": (1, (571, 29), (667, 33)),
    "long 7:1": (5, (525, 75), (158, 22)),
    "balanced": (1, (300, 300), (350, 350)),
    # the cost part: the default recipe on three data sizes, texts of 3 reviews (~60 words)
    "cost 200": (3, (175, 25), (88, 12)),
    "cost 500": (3, (437, 63), (88, 12)),
    "cost 1000": (3, (875, 125), (88, 12)),
}
COST_VARIANTS = ("cost 200", "cost 500", "cost 1000")
IMAGE_VARIANT = "fashion 21:1"
IMAGE_TRAIN = {"trouser": 150, "bag": 25, "sandal": 7}
IMAGE_TEST = 100
"""Test images per class (all the bundled ones of those classes)."""
DEFAULT_RECIPE_ON = ("short 7:1", "long 7:1")
CRIPPLED_ON = "short 7:1"

SIDES = [
    "tsuika transfer",
    "transfer (old)",
    "sklearn C=1",
    "sklearn balanced",
    "tsuika default",
    "crippled head",
]
BASELINE_SIDES = ["majority", "classical"]

started_at = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - started_at:6.0f} s] {message}", flush=True)


def import_tsuika():
    """tsuika, imported; another engineer may be mid-edit: one retry after a minute."""
    try:
        import tsuika
        import tsuika.advice.features
        import tsuika.models

        return tsuika
    except Exception as err:
        say(f"import failed ({type(err).__name__}: {err}); retrying in 60 s")
        time.sleep(60)
        import importlib

        for name in list(__import__("sys").modules):
            if name == "tsuika" or name.startswith("tsuika."):
                del __import__("sys").modules[name]
        importlib.invalidate_caches()
        import tsuika
        import tsuika.advice.features
        import tsuika.models

        return tsuika


# -- data --------------------------------------------------------------------------------------


def read_table(path: str, column: str) -> tuple[list[str], list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r[column] for r in rows], [r["label"] for r in rows]


def draw_texts(rows: list[dict], counts: tuple[int, int], join: int, rng) -> list[dict]:
    """`counts` (positive, negative) examples; each is `join` reviews of one label, drawn
    without replacement, joined by a space."""
    out = []
    for label, n in zip(("positive", "negative"), counts, strict=True):
        pool = [r["text"] for r in rows if r["label"] == label]
        chosen = rng.sample(pool, n * join)
        out += [
            {"text": " ".join(chosen[i * join : (i + 1) * join]), "label": label} for i in range(n)
        ]
    rng.shuffle(out)
    return out


def text_files(folder: Path, variant: str, seed: int) -> dict[str, str]:
    join, train_counts, test_counts = TEXT_VARIANTS[variant]
    rng = random.Random(f"{variant}:{seed}")
    train = draw_texts(review_rows("train"), train_counts, join, rng)
    test = draw_texts(review_rows("test"), test_counts, join, rng)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "train": write_table(folder / "train.csv", train, ["text", "label"]),
        "test": write_table(folder / "test.csv", test, ["text", "label"]),
    }


def image_rows(split: str) -> list[dict]:
    root = ROOT / "src" / "tsuika" / "data" / "bundled" / "fashion" / split
    return [
        {"path": str(p), "label": p.parent.name} for p in sorted(root.glob("*/*")) if p.is_file()
    ]


def image_files(folder: Path, seed: int) -> dict[str, str]:
    rng = random.Random(f"{IMAGE_VARIANT}:{seed}")
    train, test = [], []
    train_rows, test_rows = image_rows("train"), image_rows("test")
    for label, n in IMAGE_TRAIN.items():
        train += rng.sample([r for r in train_rows if r["label"] == label], n)
        test += rng.sample([r for r in test_rows if r["label"] == label], IMAGE_TEST)
    rng.shuffle(train)
    rng.shuffle(test)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "train": write_table(folder / "train.csv", train, ["path", "label"]),
        "test": write_table(folder / "test.csv", test, ["path", "label"]),
    }


# -- sides -------------------------------------------------------------------------------------
def share_of_top(predicted: list) -> tuple[float, str]:
    if not predicted:
        return float("nan"), ""
    label, n = Counter(predicted).most_common(1)[0]
    return n / len(predicted), str(label)


def tsuika_side(
    files: dict,
    model: str,
    seed: int,
    out: Path,
    extra: dict | None = None,
    data_extra: dict | None = None,
) -> dict:
    """One `tsuika.train` call; its figures, or the error it raised."""
    import tsuika

    kwargs = dict(extra or {})
    data = {**files, **(data_extra or {})}
    t0 = time.perf_counter()
    try:
        run = tsuika.train(
            model=model,
            data=data,
            seed=seed,
            progress=False,
            report=False,
            output=str(out),
            **kwargs,
        )
    except Exception as err:
        tail = traceback.format_exc().strip().splitlines()[-6:]
        return {
            "error": f"{type(err).__name__}: {err}",
            "traceback": tail,
            "wall_s": time.perf_counter() - t0,
        }
    wall = time.perf_counter() - t0
    summary = run.summary
    predicted = []
    with open(run.path / "predictions.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                predicted.append(json.loads(line).get("predicted"))
    share, top = share_of_top(predicted)
    max_length = None
    try:
        import yaml

        config = yaml.safe_load((run.path / "config.yaml").read_text(encoding="utf-8"))
        max_length = (config.get("train") or {}).get("max_length")
    except Exception:
        pass
    verdicts = summary.get("verdicts") or {}
    record = {
        "accuracy": summary["test"].get("accuracy"),
        "macro_f1": summary["test"].get("macro_f1"),
        "top_share": share,
        "top_class": top,
        "wall_s": wall,
        "verdict": (verdicts.get("transfer") or {}).get("text"),
        "max_length": max_length,
        "method": summary.get("method"),
        "head_fit": summary.get("head_fit"),
        "imbalance": summary.get("imbalance"),
        "recipe": summary.get("recipe"),
        "epochs_run": (summary.get("training") or {}).get("epochs_run"),
        "estimate_s": (summary.get("estimate") or {}).get("seconds"),
        "estimate_cuts": (summary.get("estimate") or {}).get("cuts"),
        "baselines": {
            name: {k: b.get(k) for k in ("title", "accuracy", "macro_f1", "C", "class_weight")}
            for name, b in (summary.get("baselines") or {}).items()
            if isinstance(b, dict)
        },
    }
    return record


_models: dict = {}


def frozen_model(model: str, max_length: int | None, image_size: int | None):
    import torch

    from tsuika.config import build_config
    from tsuika.models import model_for

    key = (model, max_length, image_size)
    if key not in _models:
        tree: dict = {"model": model}
        if max_length is not None:
            tree["train"] = {"max_length": max_length}
        if image_size is not None:
            tree["data"] = {"image_size": image_size}
        _models.clear()  # one at a time: memory
        _models[key] = model_for(build_config(tree), lambda width: torch.nn.Identity()).eval()
    return _models[key]


def features_of(model, inputs: list, images: bool) -> np.ndarray:
    import torch

    from tsuika.advice.features import pooled_features

    if images:
        from tsuika.data.images import decode

        inputs = [decode(Path(p), 10**8) for p in inputs]
    with torch.no_grad():
        return pooled_features(model, inputs)


def sklearn_sides(
    files: dict, column: str, model_name: str, max_length: int | None, image_size: int | None
) -> dict[str, dict]:
    """Sides 3 and 4 on the same frozen features tsuika computes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    images = column == "path"
    t0 = time.perf_counter()
    model = frozen_model(model_name, max_length, image_size)
    load_s = time.perf_counter() - t0
    x_train, y_train = read_table(files["train"], column)
    x_test, y_test = read_table(files["test"], column)
    t0 = time.perf_counter()
    f_train = features_of(model, x_train, images)
    extract_s = time.perf_counter() - t0
    f_test = features_of(model, x_test, images)
    y_train, y_test = np.array(y_train), np.array(y_test)
    out = {}
    for side, weight in (("sklearn C=1", None), ("sklearn balanced", "balanced")):
        t0 = time.perf_counter()
        probe = LogisticRegression(C=1, max_iter=1000, class_weight=weight)
        probe.fit(f_train, y_train)
        fit_s = time.perf_counter() - t0
        predicted = probe.predict(f_test)
        share, top = share_of_top(list(predicted))
        out[side] = {
            "accuracy": float((predicted == y_test).mean()),
            "macro_f1": float(f1_score(y_test, predicted, average="macro")),
            "top_share": share,
            "top_class": top,
            "wall_s": extract_s + fit_s,
            "extract_s": extract_s,
            "fit_s": fit_s,
            "model_load_s": load_s,
            "max_length": max_length,
            "train_rows": len(y_train),
        }
    return out


# -- bookkeeping -------------------------------------------------------------------------------
def record(
    records: list,
    store: Path,
    part: str,
    variant: str,
    seed: int,
    side: str,
    result: dict,
    test_labels: list[str] | None = None,
) -> None:
    row = {
        "part": part,
        "variant": variant,
        "seed": seed,
        "side": side,
        "date": str(date.today()),
        **result,
    }
    if test_labels is not None:
        counts = Counter(test_labels)
        row["test_majority_share"] = counts.most_common(1)[0][1] / len(test_labels)
        row["test_size"] = len(test_labels)
    records.append(row)
    with store.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=str) + "\n")
    if "error" in result:
        say(f"{variant} seed {seed} {side}: FAILED {result['error'][:500]}")
    else:
        bits = [
            f"acc {100 * result['accuracy']:.1f} %" if result.get("accuracy") is not None else "",
            f"macro-F1 {result['macro_f1']:.3f}" if result.get("macro_f1") is not None else "",
            f"top {100 * result['top_share']:.1f} % ({result.get('top_class')})"
            if result.get("top_share") is not None
            else "",
            f"{result['wall_s']:.1f} s" if result.get("wall_s") is not None else "",
            f"max_length {result['max_length']}" if result.get("max_length") else "",
        ]
        say(f"{variant} seed {seed} {side}: " + ", ".join(b for b in bits if b))
        if result.get("verdict"):
            say(f"    verdict: {result['verdict']}")
        if result.get("recipe"):
            say(f"    recipe: {result['recipe']}")


def baseline_records(result: dict) -> dict[str, dict]:
    names = {"majority": "majority", "classical": "classical"}
    out = {}
    for name, side in names.items():
        b = (result.get("baselines") or {}).get(name)
        if b and b.get("accuracy") is not None:
            out[side] = {
                "accuracy": b["accuracy"],
                "macro_f1": b.get("macro_f1"),
                "source": "tsuika transfer run's baselines",
                "title": b.get("title"),
            }
    return out


def run_variant(
    part: str, variant: str, seeds, tmp: Path, records: list, store: Path, sides: set[str]
) -> None:
    images = part == "images"
    model = "efficientnet-lite0" if images else "minilm-l6"
    column = "path" if images else "text"
    data_extra = {"image_size": 128, "allow_outside_paths": True} if images else {}
    image_size = 128 if images else None
    for seed in seeds:
        folder = tmp / f"{variant.replace(' ', '_').replace(':', '-')}-{seed}"
        files = image_files(folder, seed) if images else text_files(folder, variant, seed)
        _, test_labels = read_table(files["test"], column)
        max_length = None
        if "tsuika transfer" in sides:
            ours = {"method": "transfer"}
            result = tsuika_side(files, model, seed, folder / "runs", ours, data_extra)
            record(records, store, part, variant, seed, "tsuika transfer", result, test_labels)
            max_length = result.get("max_length")
            for side, b in baseline_records(result).items():
                record(records, store, part, variant, seed, side, b, test_labels)
        if "transfer (old)" in sides:
            old = {"method": "transfer", "head": {"fit": "steps"}, "train": {"balance": "none"}}
            result = tsuika_side(files, model, seed, folder / "runs", old, data_extra)
            record(records, store, part, variant, seed, "transfer (old)", result, test_labels)
            max_length = max_length or result.get("max_length")
        if sides & {"sklearn C=1", "sklearn balanced"}:
            if not images and max_length is None:
                max_length = 128
                say("    max_length unknown from the runs (null or failed): using 128")
            try:
                found = sklearn_sides(
                    files, column, model, None if images else max_length, image_size
                )
            except Exception as err:
                tail = traceback.format_exc().strip().splitlines()[-6:]
                found = {
                    s: {"error": f"{type(err).__name__}: {err}", "traceback": tail}
                    for s in ("sklearn C=1", "sklearn balanced")
                }
            for side, result in found.items():
                if side in sides:
                    record(records, store, part, variant, seed, side, result, test_labels)
        if "crippled head" in sides and variant == CRIPPLED_ON and seed == 0:
            crippled = {
                "method": "transfer",
                "head": {"fit": "steps"},
                "train": {"epochs": 1, "lr": 1e-4},
                "baselines": {"probe": True},
            }
            result = tsuika_side(files, model, seed, folder / "runs", crippled, data_extra)
            record(records, store, part, variant, seed, "crippled head", result, test_labels)


def run_default_recipe(
    variant: str, tmp: Path, records: list, store: Path, part: str = "text"
) -> None:
    folder = tmp / f"default-{variant.replace(' ', '_').replace(':', '-')}-0"
    files = text_files(folder, variant, 0)
    _, test_labels = read_table(files["test"], "text")
    say(f"{variant} seed 0 tsuika default: fine-tuning (the slow side)…")
    result = tsuika_side(files, "minilm-l6", 0, folder / "runs")
    record(records, store, part, variant, 0, "tsuika default", result, test_labels)


# -- tables ------------------------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[float, float]:
    a = np.array(values, dtype=float)
    return float(a.mean()), float(a.std())


def table(records: list, part: str, variant: str) -> list[str]:
    rows = [r for r in records if r["part"] == part and r["variant"] == variant]
    if not rows:
        return []
    majority = [r["test_majority_share"] for r in rows if "test_majority_share" in r]
    test_size = rows[0].get("test_size")
    maj = float(np.mean(majority)) if majority else float("nan")
    lines = [
        f"### {part}: {variant} (test {test_size}, majority class {100 * maj:.1f} %)",
        "",
        "| side | n | accuracy % | macro-F1 | most predicted class % | wall s | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    means: dict[str, dict] = {}
    for side in SIDES[:5] + BASELINE_SIDES + SIDES[5:]:
        runs = [r for r in rows if r["side"] == side]
        if not runs:
            continue
        ok = [r for r in runs if "error" not in r and r.get("accuracy") is not None]
        failed = len(runs) - len(ok)
        if not ok:
            lines.append(f"| {side} | 0 | failed | | | | {runs[0]['error'][:160]} |")
            continue
        acc, acc_sd = mean_std([100 * r["accuracy"] for r in ok])
        f1s = [r["macro_f1"] for r in ok if r.get("macro_f1") is not None]
        f1, f1_sd = mean_std(f1s) if f1s else (float("nan"), float("nan"))
        shares = [100 * r["top_share"] for r in ok if r.get("top_share") is not None]
        share_text = f"{np.mean(shares):.1f} (max {max(shares):.1f})" if shares else "–"
        walls = [r["wall_s"] for r in ok if r.get("wall_s") is not None]
        wall_text = f"{np.mean(walls):.1f}" if walls else "–"
        notes = []
        if failed:
            notes.append(f"{failed} failed")
        lengths = {r.get("max_length") for r in ok if r.get("max_length")}
        if lengths and side in ("tsuika transfer", "sklearn C=1"):
            notes.append("max_length " + "/".join(str(n) for n in sorted(lengths)))
        if side == "tsuika transfer":
            cs = [((r.get("head_fit") or {}).get("C")) for r in ok]
            if any(c is not None for c in cs):
                notes.append("C " + "/".join(str(c) for c in cs))
        if side == "tsuika default" and ok[0].get("recipe"):
            notes.append(f"recipe {ok[0]['recipe'].get('method')}")
        if side == "crippled head":
            notes.append(f"verdict: {(ok[0].get('verdict') or '')[:70]}…")
        if side in BASELINE_SIDES:
            notes.append("from the transfer runs' summary")
        means[side] = {"acc": acc, "f1": f1, "share": max(shares) if shares else None, "ok": ok}
        lines.append(
            f"| {side} | {len(ok)} | {acc:.1f} ± {acc_sd:.1f} | {f1:.3f} ± {f1_sd:.3f} | "
            f"{share_text} | {wall_text} | {'; '.join(notes)} |"
        )
    lines.append("")
    lines += checks(means, maj)
    return lines


def checks(means: dict, majority: float) -> list[str]:
    out = []
    for side in ("tsuika transfer", "transfer (old)"):
        if side not in means:
            continue
        m = means[side]
        parts = []
        if "sklearn C=1" in means:
            gap = m["acc"] - means["sklearn C=1"]["acc"]
            ok = gap >= -0.5
            parts.append(
                f"accuracy vs sklearn C=1 {gap:+.1f} points (≥ −0.5: {'PASS' if ok else 'FAIL'})"
            )
        if "sklearn balanced" in means:
            gap = m["f1"] - means["sklearn balanced"]["f1"]
            ok = gap >= -0.01
            parts.append(
                f"macro-F1 vs sklearn balanced {gap:+.3f} (≥ −0.01: {'PASS' if ok else 'FAIL'})"
            )
        if m["share"] is not None:
            if majority < 0.8:
                ok = m["share"] <= 95
                parts.append(
                    f"most predicted class ≤ 95 %: {m['share']:.1f} % ({'PASS' if ok else 'FAIL'})"
                )
            else:
                parts.append(
                    f"most predicted class {m['share']:.1f} % (check n/a: majority "
                    f"{100 * majority:.1f} % ≥ 80 %)"
                )
        out.append(f"- checks, {side}: " + "; ".join(parts))
    return out


# -- main --------------------------------------------------------------------------------------
def machine() -> str:
    model, flags = "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return (
        f"{model} · avx512f {'yes' if 'avx512f' in flags else 'no'} · "
        f"avx2 {'yes' if 'avx2' in flags else 'no'} · {os.cpu_count()} cores"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--part", default="text", choices=["text", "images", "cost", "all"])
    parser.add_argument("--variants", nargs="*", help="only these text variants")
    parser.add_argument("--sides", nargs="*", help=f"only these sides (of {SIDES})")
    parser.add_argument("--results", default=str(STORE))
    args = parser.parse_args()
    import_tsuika()
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 2))
    seeds = list(range(args.seeds))
    sides = set(args.sides or SIDES)
    print(
        f"# bench/real_data.py · {datetime.now():%Y-%m-%d %H:%M} · {platform.machine()} · "
        f"{machine()} · torch {torch.__version__} · {torch.get_num_threads()} threads · "
        f"seeds {seeds} · part {args.part}",
        flush=True,
    )
    store = Path(args.results)
    store.parent.mkdir(parents=True, exist_ok=True)
    records: list = []
    variants = args.variants or [v for v in TEXT_VARIANTS if v not in COST_VARIANTS]
    with tempfile.TemporaryDirectory(prefix="tsuika-real-data-") as tmp_name:
        tmp = Path(tmp_name)
        if args.part in ("text", "all"):
            for variant in variants:
                say(f"== text {variant}")
                run_variant("text", variant, seeds, tmp, records, store, sides)
            if "tsuika default" in sides:
                for variant in DEFAULT_RECIPE_ON:
                    if variant in variants:
                        run_default_recipe(variant, tmp, records, store)
            say(f"text part done: {time.perf_counter() - started_at:.0f} s")
        if args.part in ("cost", "all"):
            for variant in COST_VARIANTS:
                say(f"== cost: the default recipe on {variant}")
                run_default_recipe(variant, tmp, records, store, part="cost")
        if args.part in ("images", "all"):
            say(f"== images {IMAGE_VARIANT}")
            image_sides = sides - {"tsuika default", "crippled head"}
            run_variant("images", IMAGE_VARIANT, seeds, tmp, records, store, image_sides)
    print(flush=True)
    for part, names in (("text", variants), ("images", [IMAGE_VARIANT]), ("cost", [])):
        for variant in names:
            lines = table(records, part, variant)
            if lines:
                print("\n".join(lines) + "\n", flush=True)
    costs = [r for r in records if r["part"] == "cost" and "error" not in r]
    if costs:
        print(
            "| training texts | recipe | epochs | estimated s | measured s | measured / "
            "estimated | cuts |\n|---|---|---|---|---|---|---|"
        )
    for r in costs:
        ratio = r["wall_s"] / r["estimate_s"] if r.get("estimate_s") else float("nan")
        print(
            f"| {r['variant'].split()[-1]} | {r.get('method')} | {r.get('epochs_run')} | "
            f"{r.get('estimate_s') or 0:.0f} | {r['wall_s']:.0f} | {ratio:.2f} | "
            f"{'; '.join(r.get('estimate_cuts') or []) or '–'} |",
            flush=True,
        )
    crippled = [r for r in records if r["side"] == "crippled head"]
    for r in crippled:
        print(
            f"crippled head ({r['variant']}, seed {r['seed']}) transfer verdict: "
            f"{r.get('verdict') or r.get('error')}",
            flush=True,
        )
    failed = [r for r in records if "error" in r]
    for r in failed:
        print(
            f"FAILED {r['part']} {r['variant']} seed {r['seed']} {r['side']}: {r['error']}",
            flush=True,
        )
    print(
        f"\nresults appended to {store}; this run {time.perf_counter() - started_at:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
