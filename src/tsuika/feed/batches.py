"""Batch orders: length-sorted for inference, shuffled (optionally length-bucketed) for training.

Every order is a pure function of (seed, epoch), so a resumed run sees the same batches.
"""

from __future__ import annotations

import random


def sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar length: padding ≈ 1.01× instead of ≈ 2× in file order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def training_batches(
    n: int,
    batch_size: int,
    seed: int,
    epoch: int,
    lengths: list[int] | None = None,
    draw: list[float] | None = None,
) -> list[list[int]]:
    """A shuffled epoch. With `lengths`, batches are drawn from length buckets: shuffle, sort
    each window of 50 batches by length, cut, then shuffle the batches — most of the padding
    saving of sorting, with the randomness SGD needs. With `draw` weights, the epoch is n
    examples drawn with replacement in proportion to them."""
    rng = random.Random(seed * 100_003 + epoch)
    if draw is not None:
        order = rng.choices(range(n), weights=draw, k=n)
    else:
        order = list(range(n))
        rng.shuffle(order)
    if lengths is not None:
        window = batch_size * 50
        order = [
            i
            for start in range(0, n, window)
            for i in sorted(order[start : start + window], key=lambda i: lengths[i])
        ]
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if lengths is not None:
        rng.shuffle(batches)
    return batches
