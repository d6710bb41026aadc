"""Compute budgets in forward-pass FLOPs, so a from-scratch baseline can be given what the
adapted run spent. Training an example costs about 3× its forward pass (forward, and a
backward twice as costly: Kaplan et al. 2020, §2.1); a frozen prefix that is cached costs one
forward pass over the data in all."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from tsuika.feed import input_feed
from tsuika.models.base import AdaptableModel

TRAIN_COST = 3.0
"""Forward + backward FLOPs of a trained example, in forward passes."""


@torch.no_grad()
def stage_flops(model: AdaptableModel, inputs: list, sample: int = 16) -> list[float]:
    """Forward FLOPs per example of each stage, counted by PyTorch on the first `sample`
    inputs (texts: their real lengths, so the estimate follows the data)."""
    feed = input_feed(model, inputs[:sample])
    device = next(model.parameters()).device
    state = feed.batch(list(range(len(feed)))).to(device).state
    was_training = model.training
    model.eval()
    flops = []
    try:
        for stage in model.stages:
            with FlopCounterMode(display=False) as counter:
                state = stage(state)
            flops.append(counter.get_total_flops() / len(feed))
    finally:
        model.train(was_training)
    return flops


def adapted_flops(
    flops: list[float], boundary: int, cached: bool, n_train: int, n_val: int, epochs: int
) -> float:
    """What a run spent: the stages from `boundary` up train (and validate) every epoch; the
    frozen prefix below ran once when cached, else every epoch (forward only)."""
    below, above = sum(flops[:boundary]), sum(flops[boundary:])
    prefix = (n_train + n_val) * below
    per_epoch = (TRAIN_COST * n_train + n_val) * above
    return (prefix if cached else 0.0) + epochs * (per_epoch + (0.0 if cached else prefix))


def matched_epochs(flops: list[float], budget: float, n_train: int, n_val: int, most: int) -> int:
    """Epochs of training every stage that fit in `budget` FLOPs (at least 1, at most `most`)."""
    per_epoch = (TRAIN_COST * n_train + n_val) * sum(flops)
    return max(1, min(most, round(budget / per_epoch))) if per_epoch > 0 else 1
