"""The method contract: `prepare(model)`, `param_groups(model)`, `step(model, batch) -> dict`.

The loop calls only these three; it never asks which method it runs. A new method is one new
module plus one line in `tsuika.methods.METHODS`.
"""

from __future__ import annotations

import torch
from torch import nn

from tsuika.config import Config
from tsuika.models.base import AdaptableModel
from tsuika.train.feed import Batch


def set_trainable(model: AdaptableModel, trainable_groups: set[int]) -> None:
    """Exactly the parameters of `trainable_groups` train; every other one gets no gradient
    (and so no optimizer state)."""
    for group in model.layer_groups():
        for param in group.parameters():
            param.requires_grad_(group.index in trainable_groups)


def decay_groups(module: nn.Module, lr: float, weight_decay: float, name: str) -> list[dict]:
    """Optimizer groups for the trainable parameters of `module`: weight decay on matrices
    only, none on biases and norm scales (as in BERT and nanoGPT `configure_optimizers`)."""
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = []
    if decay:
        groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": name})
    if no_decay:
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": name})
    return groups


class Method:
    """Supervised classification by cross-entropy; subclasses choose what trains and how fast."""

    name = "base"

    def __init__(self, config: Config) -> None:
        self.config = config

    def prepare(self, model: AdaptableModel) -> None:
        raise NotImplementedError

    def param_groups(self, model: AdaptableModel) -> list[dict]:
        raise NotImplementedError

    def cache_boundary(self, model: AdaptableModel) -> int:
        """How many leading groups stay frozen for the whole run (their output is cached)."""
        return model.frozen_prefix()

    def on_epoch_start(self, model: AdaptableModel, epoch: int) -> list[str]:
        """Change what trains at an epoch boundary; returns events to log."""
        return []

    def step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        logits = model(batch.state, batch.start)["logits"]
        loss = nn.functional.cross_entropy(logits.float(), batch.labels)
        return {"loss": loss, "logits": logits}
