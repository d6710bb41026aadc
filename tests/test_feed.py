"""Feeds carry every key they are given: collate keeps extra keys with their dtypes, the
activation cache keeps the targets, and batch weights count loss units."""

from __future__ import annotations

from pathlib import Path

import torch

from tsuika.config import HeadConfig
from tsuika.feed import Feed, collate_states
from tsuika.feed.cache import CacheSettings, cache_boundary
from tsuika.models import Request, load_model
from tsuika.models.heads import Head
from tsuika.models.images import ImagePreprocess, ImageSpec


def test_text_collate_keeps_every_key_with_its_dtype(tiny_bert_dir: Path) -> None:
    model = load_model(str(tiny_bert_dir), Request(lambda w: Head(w, 2), HeadConfig()))
    items = model.preprocess.encode(["a good film", "bad"])
    items[0]["soft"] = torch.tensor([[0.5, 0.5]] * len(items[0]["input_ids"]))
    items[1]["soft"] = torch.tensor([[0.1, 0.9]] * len(items[1]["input_ids"]))
    batch = model.preprocess.collate(items)
    assert batch["soft"].dtype == torch.float32 and batch["soft"].shape == (2, 5, 2)
    assert batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]


def test_image_collate_keeps_extra_keys() -> None:
    preprocess = ImagePreprocess(ImageSpec(8, 1.0, (0.5,) * 3, (0.5,) * 3))
    items = [{"image": torch.zeros(3, 8, 8, dtype=torch.uint8), "teacher": torch.ones(4)}] * 2
    batch = preprocess.collate(items)
    assert batch["pixels"].shape == (2, 3, 8, 8) and batch["teacher"].shape == (2, 4)


def test_a_cached_feed_keeps_targets_lengths_and_units(tiny_bert_dir: Path) -> None:
    model = load_model(str(tiny_bert_dir), Request(lambda w: Head(w, 2), HeadConfig()))
    items = model.preprocess.encode(["a good film", "bad", "the plot"])
    targets = {"label": torch.tensor([1, 0, 1]), "score": torch.tensor([0.5, 2.0, 1.0])}
    feed = Feed(items, targets, 0, model.preprocess.collate, [4, 3, 4], units=[3.0, 1.0, 2.0])
    cached = cache_boundary(model, feed, 2, CacheSettings(), "train")
    assert cached.start == 2 and cached.lengths == feed.lengths and cached.units == feed.units
    batch = cached.batch([2, 0])
    assert batch.targets["score"].tolist() == [1.0, 0.5]
    assert batch.weight == 5.0  # loss units, not examples
    assert feed.weight([0, 1]) == 4.0
    assert Feed(items, targets, 0, collate_states).weight([0, 1]) == 2.0
