"""Classification metrics on predicted labels."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score


def classification_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": float((truth == predicted).mean()),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
    }


def paired_bootstrap(
    truth: np.ndarray,
    predicted_a: np.ndarray,
    predicted_b: np.ndarray,
    samples: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy gain of A over B with a 95% percentile interval, resampling test examples
    (Efron & Tibshirani 1993; paired, as in Koehn 2004 for MT significance).

    Both systems are scored on the same resampled examples, so the interval reflects the
    difference only, not the shared difficulty of the test set.
    """
    rng = np.random.default_rng(seed)
    right_a = (predicted_a == truth).astype(np.float64)
    right_b = (predicted_b == truth).astype(np.float64)
    diff = right_a - right_b
    draws = rng.integers(0, len(truth), size=(samples, len(truth)))
    gains = diff[draws].mean(axis=1)
    low, high = np.percentile(gains, [2.5, 97.5])
    return {"gain": float(diff.mean()), "low": float(low), "high": float(high)}
