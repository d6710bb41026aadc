"""Contrastive fine-tuning on pairs of examples, as SetFit does (Tunstall et al. 2022,
arXiv:2209.11055), at a fraction of its cost.

SetFit turns k labelled sentences into pairs (same class → similarity 1, different → 0),
fine-tunes the sentence encoder so the cosine similarity of each pair's embeddings matches
(sentence-transformers' CosineSimilarityLoss), then fits a logistic regression on the tuned
embeddings. It encodes both sentences of every pair anew at each step. Here one forward pass
over a batch of B examples yields all B(B-1)/2 pairs in it at once, positives and negatives
weighted equally (SetFit's oversampling balances them too), and a frozen prefix is cached as
in every other method. The head trains in the same steps on the embeddings with the body's
gradient stopped: it follows the moving features, and validation can score every epoch.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from tsuika.config import Config
from tsuika.feed import Batch, Feed
from tsuika.feed.cache import CacheSettings
from tsuika.methods.finetune import Finetune
from tsuika.model_kinds import ENCODERS
from tsuika.models.base import AdaptableModel, unwrapped
from tsuika.tasks.base import Task

EPOCH_EXAMPLES = 128
"""A training epoch holds at least this many examples: a few examples are repeated, so 16
sentences give 4 steps of 32 between two validations (as SetFit's `num_iterations` repeats
its pair sampling)."""


def pair_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SetFit's loss over every pair in the batch: (cos(a, b) − [same class])², the mean over
    pairs of the same class and the mean over pairs of different classes, averaged (so ten
    classes' many negative pairs do not drown the positives). A batch with only one kind of
    pair uses that kind alone."""
    normed = nn.functional.normalize(features.float(), dim=-1)
    similarity = normed @ normed.T
    same = labels[:, None] == labels[None, :]
    pairs = torch.triu(torch.ones_like(same), diagonal=1)
    error = (similarity - same.float()) ** 2
    parts = [error[pairs & kind].mean() for kind in (same, ~same) if (pairs & kind).any()]
    if not parts:  # a batch of one example has no pair
        return similarity.sum() * 0.0
    return torch.stack(parts).mean()


class Contrastive(Finetune):
    """The pretrained groups that train learn from the pair loss alone; the head learns from
    the task's cross-entropy on the (detached) pooled features."""

    name = "contrastive"
    model_kinds = ENCODERS
    tasks = frozenset({"classify"})

    def __init__(self, config: Config, task: Task) -> None:
        super().__init__(config, task)
        self.column = task.columns[0]

    def precompute(
        self, model: AdaptableModel, feed: Feed, settings: CacheSettings, name: str
    ) -> Feed:
        feed = super().precompute(model, feed, settings, name)
        if name != "train" or not len(feed):
            return feed
        repeated = feed.repeated(-(-EPOCH_EXAMPLES // len(feed)))
        # Random batches, not length buckets: with a few hundred examples, buckets would be
        # the same batches every epoch, and so the same pairs; SetFit samples pairs at random.
        return replace(repeated, lengths=None)

    def epoch_examples(self, train_examples: int) -> int:
        return train_examples * -(-EPOCH_EXAMPLES // max(train_examples, 1))

    def step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        state = self.task.inputs(batch.state, batch.targets)
        pooled_at = len(unwrapped(model).stages) - 1
        pooled = model(state, batch.start, pooled_at)
        pairs = pair_loss(pooled["features"], batch.targets[self.column])
        detached = {**pooled, "features": pooled["features"].detach()}
        outputs = model(detached, pooled_at)
        loss = self.task.losses(outputs, batch.targets).mean() + pairs
        if self.anchor or self.remembered is not None:
            loss = loss + self.penalty(model, pooled, batch)
        return {"loss": loss, "outputs": outputs, "pair_loss": pairs.detach()}
