"""The hand-written PyTorch loop the benchmarks compare tsuika's loop with."""

from __future__ import annotations

import os
import time

import torch

from tsuika.feed import Feed
from tsuika.feed.batches import sorted_batches
from tsuika.train.schedule import lr_multiplier

# Benches time cold runs: no frozen pass is read from the activation store.
os.environ.setdefault("TSUIKA_ACTIVATIONS", "off")


def plain_pytorch_epoch(
    model, feed: Feed, lr: float, order: list[list[int]], val: Feed, column: str = "label"
) -> float:
    """One epoch as a person would write it — the same batches, AdamW, warmup + cosine,
    clipping and end-of-epoch validation pass as tsuika's loop; returns seconds. The loss is
    cross-entropy on the feed's `column` target (the single label column)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    model.train()
    started = time.perf_counter()
    for step, indices in enumerate(order):
        batch = feed.batch(indices)
        loss = torch.nn.functional.cross_entropy(
            model(batch.state)["logits"], batch.targets[column]
        )
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_multiplier(step, len(order), 1, "cosine")
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        for indices in sorted_batches(val.lengths or [1] * len(val), 128):
            model(val.batch(indices).state)["logits"].argmax(-1)
    return time.perf_counter() - started
