"""Baselines every summary carries: the majority class, and training from scratch."""

from __future__ import annotations

from collections import Counter

import numpy as np


def majority_predictions(train_labels: list[int], n: int) -> tuple[int, np.ndarray]:
    """Always predict the most frequent training label (ties: the lowest index)."""
    counts = Counter(train_labels)
    label = max(sorted(counts), key=lambda k: counts[k])
    return label, np.full(n, label)
