"""Learning-rate multipliers: linear warmup, then cosine or linear decay (nanoGPT `get_lr`)."""

from __future__ import annotations

import math


def lr_multiplier(step: int, total: int, warmup: int, schedule: str) -> float:
    """Factor applied to every group's base rate at optimizer step `step` (0-based).

    Warmup ramps from 1/warmup to 1 so the first update is small but not zero; pretrained
    weights are easily knocked off their basin by early large steps (ULMFiT, Howard & Ruder
    2018, §3.2).
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))
