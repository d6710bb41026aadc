"""How the closed-form head should choose its regularisation C (issue 30): by the held-out
selection metric (macro-F1 / accuracy) or by the held-out class-weighted log-loss, on the
imbalanced review variants of `bench/real_data.py`, features computed once per seed, each
with the training rows in two orders (the give-back of validation changes their order and
so the folds: a criterion that depends on the fold assignment is noise).

    python bench/head_selection.py "short 7:1" "short 20:1" balanced

Prints, per variant and seed, (C, test accuracy, test macro-F1) for each criterion and order.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import real_data as rd

rd.import_tsuika()
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402

from tsuika.tasks.linear import _scaler, class_weights, macro_f1, out_of_fold  # noqa: E402

# Benches time cold runs: no frozen pass is read from the activation store.
os.environ.setdefault("TSUIKA_ACTIVATIONS", "off")


def chosen_c(x, y, classes: int, weights, selection: str, criterion: str, seed: int) -> float:
    held, _ = out_of_fold(x, y, classes, weights, seed)

    def value(c: float) -> float:
        if criterion == "loss":
            return float(np.sum(weights * np.maximum(held[c][np.arange(len(y)), y], -50)))
        predicted = held[c].argmax(1)
        if selection == "macro_f1":
            return macro_f1(y, predicted, classes)
        return float((predicted == y).mean())

    return max(held, key=value)


def main() -> None:
    variants = sys.argv[1:] or ["short 7:1", "short 20:1", "balanced"]
    warnings.simplefilter("ignore")
    model = rd.frozen_model("minilm-l6", 128, None)
    tmp = Path(tempfile.mkdtemp())
    for variant in variants:
        for seed in range(3):
            folder = tmp / f"{variant.replace(' ', '_').replace(':', '-')}-{seed}"
            files = rd.text_files(folder, variant, seed)
            texts, labels = rd.read_table(files["train"], "text")
            test_texts, test_labels = rd.read_table(files["test"], "text")
            names = sorted(set(labels))
            y_all = np.array([names.index(v) for v in labels])
            y_test = np.array([names.index(v) for v in test_labels])
            f_all = rd.features_of(model, texts, False).astype(np.float64)
            f_test = rd.features_of(model, test_texts, False)
            classes = len(names)
            counts = np.bincount(y_all)
            imbalanced = counts.max() / counts.min() >= 3
            selection = "macro_f1" if imbalanced else "accuracy"
            out = {}
            for order in (0, 1):
                rows = np.random.default_rng(order).permutation(len(y_all)) if order else None
                x, y = (f_all[rows], y_all[rows]) if order else (f_all, y_all)
                mean, std = _scaler(x)
                std = np.full_like(std, np.sqrt(np.mean(std**2)))
                x = (x - mean) / std
                w = class_weights(y, classes) if imbalanced else np.ones(len(y))
                for criterion in ("metric", "loss"):
                    c = chosen_c(x, y, classes, w, selection, criterion, seed)
                    head = LogisticRegression(C=c, max_iter=1000).fit(x, y, sample_weight=w)
                    predicted = head.predict((f_test - mean) / std)
                    accuracy = float((predicted == y_test).mean())
                    f1 = float(f1_score(y_test, predicted, average="macro"))
                    out[f"{criterion}/{order}"] = (c, round(accuracy, 3), round(f1, 3))
            print(variant, seed, out, flush=True)


if __name__ == "__main__":
    main()
