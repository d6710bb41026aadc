"""Features for the classical baseline: what a practitioner fits before reaching for a
pretrained network. Text: TF-IDF of word uni/bigrams and character 2–5-grams (the strong
linear text baseline of Wang & Manning 2012); images: downsampled pixels. Fitted on the
training split only."""

from __future__ import annotations

import numpy as np
import scipy.sparse
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from tsuika.data.splits import Splits
from tsuika.model_kinds import IMAGE_ENCODER
from tsuika.tasks.linear import FeatureSplits, standardised

PIXELS = 32
"""Side of the downsampled image: small enough for a linear model on a few hundred images,
large enough to keep shape (the size of CIFAR and of Fashion-MNIST's 28 px)."""


def classical_features(model_kind: str, splits: Splits) -> tuple[FeatureSplits, str]:
    """Features of the three splits (read for a model of `model_kind`) and what they are, in
    words."""
    if model_kind == IMAGE_ENCODER:
        return pixel_features(splits), f"{PIXELS}×{PIXELS} pixels"
    return tfidf_features(splits), "TF-IDF n-grams"


def tfidf_features(splits: Splits) -> FeatureSplits:
    """Sparse TF-IDF [N, words + character n-grams], vocabularies from the training texts."""
    words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)
    train = splits.train.inputs
    try:
        fitted = [words.fit(train), chars.fit(train)]
    except ValueError:  # every character n-gram occurs once: too little text for min_df=2
        fitted = [words.fit(train), chars.set_params(min_df=1).fit(train)]

    def transform(texts: list[str]):
        if not texts:  # a validation split given back to training
            width = sum(len(v.vocabulary_) for v in fitted)
            return scipy.sparse.csr_matrix((0, width))
        return scipy.sparse.hstack([v.transform(texts) for v in fitted]).tocsr()

    return transform(train), transform(splits.val.inputs), transform(splits.test.inputs)


def downsampled(images: list[torch.Tensor]) -> np.ndarray:
    """RGB uint8 images [3, H, W] of any size → [N, 3·PIXELS²] floats in [0, 1]."""
    rows = [
        torch.nn.functional.interpolate(
            image[None].float() / 255, size=(PIXELS, PIXELS), mode="bilinear", antialias=True
        ).flatten()
        for image in images
    ]
    return torch.stack(rows).numpy() if rows else np.zeros((0, 3 * PIXELS * PIXELS), np.float32)


def pixel_features(splits: Splits) -> FeatureSplits:
    """Downsampled pixels, standardised with the training split's mean and spread."""
    return standardised(
        tuple(downsampled(split.inputs) for split in (splits.train, splits.val, splits.test))
    )
