"""Linear models on fixed features, regularisation chosen on the validation split: what the
classical (no pretraining) and linear-probe baselines fit. Scikit-learn does the fitting."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

Features = Any
"""A feature matrix [N, D]: a dense numpy array or a scipy sparse matrix (TF-IDF)."""
FeatureSplits = tuple[Features, Features, Features]
"""Features of the train, validation and test splits, in that order."""


def fit_on_validation(
    make: Callable[[float], Any],
    strengths: Sequence[float],
    x_train: Features,
    y_train: np.ndarray,
    x_val: Features,
    y_val: np.ndarray,
    score: Callable[[np.ndarray, np.ndarray], float],
) -> tuple[Any, float]:
    """The model (`make(strength)` fitted on train) whose validation `score` is highest, and
    its strength. Validation picks the regularisation as it picks the adapted model's best
    epoch, so the baseline gets the same help; the test split is never seen. Ties go to the
    first strength in the list (order them from most to least regularised)."""
    best, best_score, best_strength = None, -np.inf, strengths[0]
    # One BLAS thread: these matrices are small, and a thread pool's hand-offs cost more than
    # they save (measured 5.5× faster for 400 images × 3072 pixels on 2 cores).
    with warnings.catch_warnings(), threadpool_limits(1):
        # A capped solver on a few hundred examples still gives a fair baseline; its
        # convergence notes would only be noise in the run's output.
        warnings.simplefilter("ignore", ConvergenceWarning)
        # Ridge on more pixels than images falls back to least squares, as it should.
        warnings.filterwarnings("ignore", "Singular matrix", UserWarning)
        for strength in strengths:
            model = make(strength).fit(x_train, y_train)
            value = score(y_val, model.predict(x_val)) if len(y_val) else 0.0
            if best is None or value > best_score:
                best, best_score, best_strength = model, value, strength
    return best, best_strength


def in_training_span(features: FeatureSplits) -> FeatureSplits:
    """Dense features with more dimensions than training examples, expressed in an orthonormal
    basis of the (centred) training examples' span. Exact for L2-regularised linear models
    with an intercept: the gradient in the weights is a combination of centred training
    examples, so the optimum lies in that span (the representer theorem) and the scores of
    every input are unchanged. 400 images × 3072 pixels become 400 × 399: the fits run
    several times faster (measured 4×)."""
    train = features[0]
    if not isinstance(train, np.ndarray) or train.shape[0] >= train.shape[1]:
        return features
    centred = train - train.mean(0)
    _, values, basis = np.linalg.svd(centred, full_matrices=False)
    basis = basis[values > values[0] * 1e-6] if len(values) and values[0] > 0 else basis[:1]
    return tuple(x @ basis.T for x in features)  # type: ignore[return-value]


def standardised(features: FeatureSplits) -> FeatureSplits:
    """Dense features (pixels, a probe's pooled features) scaled by the training split's mean
    and spread, so one regularisation grid suits every feature scale."""
    train = features[0]
    mean, std = train.mean(0), train.std(0) + 1e-6
    return tuple((x - mean) / std for x in features)  # type: ignore[return-value]
