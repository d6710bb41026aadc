"""`tsuika rank`: which pretrained model to start from, measured without fine-tuning any.

Two scores on each candidate's frozen features of the training split (one inference pass):

* LogME (You et al. 2021, arXiv:2102.11005): the log marginal evidence per example of a
  Bayesian linear model from the features to the labels (one-hot columns for classes), with
  its prior and noise precisions (α, β) set by evidence maximisation. Higher: the labels are
  more linearly predictable from the features, which correlates with fine-tuned accuracy.
* a cross-validated linear probe (logistic regression, or ridge for regression): the
  accuracy (or R²) a frozen backbone gives at once.
"""

from __future__ import annotations

import warnings

import numpy as np
from threadpoolctl import threadpool_limits

LOGME_ITERATIONS = 11
"""The reference implementation's cap; it usually converges in 2–3 fixed-point steps."""
PROBE_FOLDS = 5
MIN_PER_CLASS = 2
"""The probe's stratified folds need two examples of a class: one to fit, one to score."""
MIN_REGRESSION_EXAMPLES = 2 * PROBE_FOLDS
"""R² is undefined on one example: every fold needs two to score."""


def logme_targets(labels: np.ndarray, classification: bool) -> np.ndarray:
    """[N, K] targets: one-hot columns for K classes, or the values themselves ([N, 1])."""
    if classification:
        classes = np.unique(labels)
        return (labels[:, None] == classes[None, :]).astype(np.float64)
    values = np.asarray(labels, dtype=np.float64)
    return values[:, None] if values.ndim == 1 else values


def logme(features: np.ndarray, labels: np.ndarray, classification: bool = True) -> float:
    """LogME: the mean over target columns of the maximised log evidence per example."""
    f = np.asarray(features, dtype=np.float64)
    targets = logme_targets(np.asarray(labels), classification)
    # Eigen-decomposition of FᵀF once; every column's evidence reuses it.
    _, singular, right = np.linalg.svd(f, full_matrices=False)
    sigma = singular**2
    return float(np.mean([column_evidence(f, y, sigma, right)[0] for y in targets.T]))


def column_evidence(
    f: np.ndarray, y: np.ndarray, sigma: np.ndarray, right: np.ndarray
) -> tuple[float, float, float]:
    """(evidence per example, α, β) for one target column: the fixed-point updates of
    MacKay's evidence maximisation (the paper's Algorithm 1), in the eigenbasis of FᵀF.
    `right` [r, D]: the right singular vectors of F with nonzero singular values; directions
    outside them hold no data and contribute only through the prior (the D/2 log α term)."""
    n, d = f.shape
    projected = right @ (f.T @ y)  # Vᵀ Fᵀ y
    alpha, beta = 1.0, 1.0
    for _ in range(LOGME_ITERATIONS):
        gamma = float(np.sum(beta * sigma / (alpha + beta * sigma)))
        m = right.T @ (beta * projected / (alpha + beta * sigma))  # posterior mean
        m_norm = float(m @ m)
        residual = float(np.sum((y - f @ m) ** 2))
        new_alpha = gamma / (m_norm + 1e-12)
        new_beta = (n - gamma) / (residual + 1e-12)
        done = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < 0.01
        alpha, beta = new_alpha, new_beta
        if done:
            break
    m = right.T @ (beta * projected / (alpha + beta * sigma))
    m_norm = float(m @ m)
    residual = float(np.sum((y - f @ m) ** 2))
    evidence = (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - 0.5 * np.sum(np.log(alpha + beta * sigma))
        - (d - len(sigma)) / 2 * np.log(alpha)
        - beta / 2 * residual
        - alpha / 2 * m_norm
        - n / 2 * np.log(2 * np.pi)
    )
    return float(evidence / n), alpha, beta


def probe_shortfall(labels: np.ndarray, classification: bool) -> str | None:
    """Why the cross-validated probe cannot score these labels (None when it can)."""
    if not classification:
        if len(labels) < MIN_REGRESSION_EXAMPLES:
            return (
                f"the probe's {PROBE_FOLDS}-fold R² needs at least {MIN_REGRESSION_EXAMPLES} "
                f"examples, not {len(labels)}"
            )
        return None
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() >= MIN_PER_CLASS:
        return None
    lone = classes[counts.argmin()].item()
    return (
        f"class {lone!r} has only {counts.min()} example, and the probe's cross-validation "
        f"needs {MIN_PER_CLASS} of every class"
    )


def classification_probe(labels: np.ndarray, seed: int):
    """The linear probe on frozen features and its folds: standardised logistic regression,
    5-fold stratified (fewer when a class has fewer examples). Shared by `tsuika rank` and
    the forgetting measure."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(PROBE_FOLDS, int(np.unique(labels, return_counts=True)[1].min()))
    split = StratifiedKFold(max(folds, MIN_PER_CLASS), shuffle=True, random_state=seed)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=0.1)), split


def probe_score(
    features: np.ndarray, labels: np.ndarray, classification: bool, seed: int = 0
) -> float:
    """Out-of-fold accuracy (classification) or R² (regression) of a linear probe, 5-fold
    (fewer when a class has fewer examples)."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if classification:
        probe, split = classification_probe(labels, seed)
        scoring = "accuracy"
    else:
        split = KFold(PROBE_FOLDS, shuffle=True, random_state=seed)
        probe, scoring = make_pipeline(StandardScaler(), Ridge(alpha=1.0)), "r2"
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        scores = cross_val_score(probe, features, labels, cv=split, scoring=scoring)
    return float(np.mean(scores))
