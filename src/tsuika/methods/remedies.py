"""Learning without forgetting (Li & Hoiem 2016) for the methods that offer it.

A method that lists `lwf` among its `remedies` mixes in `KeepsPretrainedFeatures`: before the
first step (and again on resume, since a checkpoint does not hold them) it keeps the pretrained
encoder's pooled features of the training split, and its step adds `finetune.lwf` × how far
this batch's pooled features drifted from them. The pretrained features come from the frozen
pass the run made anyway (`Pretrained.features`), so remembering them costs no extra pass.
"""

from __future__ import annotations

import torch
from torch import nn

from tsuika.feed import Batch, Pretrained
from tsuika.model_kinds import ENCODERS
from tsuika.models.base import AdaptableModel, State, unwrapped


class KeepsPretrainedFeatures:
    """Mixed into a `Method` (before it in the bases) whose `remedies` include `lwf`."""

    remembered: torch.Tensor | None = None
    """The pretrained pooled features of the training split, by example (set by `remember`);
    None when `finetune.lwf` is off or the model is not an encoder (a causal LM's reference is
    its own outputs with the adapters switched off)."""

    def remember(self, model: AdaptableModel, pretrained: Pretrained) -> None:
        if self.config.finetune.lwf and self.task.model_kinds <= ENCODERS:
            self.remembered = pretrained.features("train").float()

    def pooled_step(self, model: nn.Module, batch: Batch) -> tuple[State, State]:
        """The pooled features and the outputs of a batch, in one pass."""
        state = self.task.inputs(batch.state, batch.targets)
        pooled_at = len(unwrapped(model).stages) - 1
        pooled = model(state, batch.start, pooled_at)
        return pooled, model(pooled, pooled_at)

    def lwf_penalty(self, pooled: State, batch: Batch) -> torch.Tensor:
        """`finetune.lwf` × the squared distance of these examples' pooled features from the
        pretrained ones."""
        assert self.remembered is not None
        rows = torch.tensor(batch.indices) % len(self.remembered)
        target = self.remembered[rows].to(pooled["features"].device)
        drift = (pooled["features"].float() - target) ** 2
        return self.config.finetune.lwf * drift.sum(-1).mean()
