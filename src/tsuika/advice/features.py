"""Frozen pooled features of a model over raw inputs: what the checks compare."""

from __future__ import annotations

import numpy as np
import torch

from tsuika.feed import gather_outputs, input_feed
from tsuika.feed.cache import CacheSettings, cache_boundary
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
    stop = model.num_stages - 1
    if settings is None:
        return gather_outputs(model, feed, batch_size=32, stop=stop)["features"].numpy()
    pooled = cache_boundary(model, feed, stop, settings, name or "features")
    return torch.stack([pooled.items[i]["features"] for i in range(len(pooled))]).numpy()
