"""Frozen pooled features of a model over raw inputs: what the checks compare."""

from __future__ import annotations

import numpy as np

from tsuika.feed import input_feed
from tsuika.feed.cache import CacheSettings, pooled_pass
from tsuika.models.base import AdaptableModel


def pooled_features(
    model: AdaptableModel, inputs: list, settings: CacheSettings | None = None, name: str = ""
) -> np.ndarray:
    """[N, D] pooled features (every stage but the head), in input order, length-sorted
    batches; an empty list gives an empty array. With a run's `settings`
    (`feed.cache.frozen_pass_settings`), the pass a run on the same inputs made is read from
    the activation store, and this one is kept there for the run that follows."""
    if not inputs:
        return np.zeros((0, 0), dtype=np.float32)
    feed = input_feed(model, inputs)
    settings = settings or CacheSettings(batch_size=32)  # without a store: computed here
    return pooled_pass(model, feed, settings, name or "features")["features"].numpy()
