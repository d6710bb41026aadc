"""The paired bootstrap: is system A better than system B on this test set?"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def paired_bootstrap(
    per_example_a: np.ndarray,
    per_example_b: np.ndarray,
    from_mean: Callable[[np.ndarray], np.ndarray] = lambda m: m,
    higher_is_better: bool = True,
    samples: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Gain of A over B in a metric with a 95% percentile interval, resampling test examples
    (Efron & Tibshirani 1993; paired, as in Koehn 2004 for MT significance).

    The metric is `from_mean(mean of per-example values)` (accuracy: the mean of 0/1 hits;
    RMSE: the root of the mean squared error). Both systems are scored on the same resampled
    examples, so the interval reflects the difference only, not the shared difficulty of the
    test set. The gain is positive when A is better, whichever way the metric points.
    """
    rng = np.random.default_rng(seed)
    a, b = np.asarray(per_example_a, float), np.asarray(per_example_b, float)
    sign = 1.0 if higher_is_better else -1.0
    draws = rng.integers(0, len(a), size=(samples, len(a)))
    gains = sign * (from_mean(resampled_means(a, draws)) - from_mean(resampled_means(b, draws)))
    low, high = np.percentile(gains, [2.5, 97.5])
    gain = sign * (from_mean(np.asarray(a.mean(0))) - from_mean(np.asarray(b.mean(0))))
    return {"gain": float(gain), "low": float(low), "high": float(high)}


def resampled_means(values: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Means over each resample's examples: [S] for values [N], [S, M] for values [N, M]
    (several statistics per example, e.g. macro-F1's per-class counts), the latter through
    each example's count in the resample so no [S, N, M] copy is made."""
    if values.ndim == 1:
        return values[draws].mean(axis=1)
    counts = np.zeros((len(draws), len(values)))
    for row, drawn in enumerate(draws):
        counts[row] = np.bincount(drawn, minlength=len(values))
    return counts @ values / draws.shape[1]


def bootstrap_interval(
    per_example: np.ndarray,
    from_mean: Callable[[np.ndarray], np.ndarray] = lambda m: m,
    samples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """95% percentile interval of one system's metric, resampling its test examples."""
    rng = np.random.default_rng(seed)
    values = np.asarray(per_example, float)
    draws = rng.integers(0, len(values), size=(samples, len(values)))
    low, high = np.percentile(from_mean(values[draws].mean(axis=1)), [2.5, 97.5])
    return float(low), float(high)
