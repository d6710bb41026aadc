"""What a run will cost, estimated before it starts: the examples it passes through the
network, times the seconds one example takes on this machine, measured on a sample of the
run's own inputs. Machines differ several-fold (an AVX2 core runs a matmul at about a sixth
of an AVX-512 one), so the speed is measured, never assumed.

    seconds ≈ per_example × (cached pass over every split
                             + epochs × (3 × training examples + validation examples) × trains
                             + test examples × trains)

`trains` is 1 when layers below the head train (their forward pass runs every step, and the
backward pass costs about twice the forward) and 0 for a head on cached features."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from tsuika.config import Config
from tsuika.data.splits import Splits
from tsuika.feed import gather_outputs, input_feed
from tsuika.models.base import AdaptableModel

SAMPLE = 48
"""Training inputs timed to measure the speed (after one warm-up batch)."""
BACKWARD = 3.0
"""A training step costs about this many forward passes (forward + backward ≈ 2×)."""


def seconds_per_example(model: AdaptableModel, splits: Splits, seed: int) -> float:
    """Seconds one training input takes through every stage but the head, in eval mode,
    measured on a seeded sample of the training split (length-sorted batches, as a run)."""
    inputs = splits.train.inputs
    sample = random.Random(seed).sample(range(len(inputs)), min(SAMPLE, len(inputs)))
    chosen = [inputs[i] for i in sample]
    if not chosen:
        return 0.0
    was_training = model.training
    model.eval()
    stop = model.num_stages - 1
    gather_outputs(model, input_feed(model, chosen[:8]), batch_size=8, stop=stop)  # warm-up
    started = time.perf_counter()
    gather_outputs(model, input_feed(model, chosen), batch_size=32, stop=stop)
    model.train(was_training)
    return (time.perf_counter() - started) / len(chosen)


@dataclass
class Estimate:
    seconds: float
    per_example: float
    epochs: int
    trains_body: bool

    def words(self) -> str:
        epochs = f"{self.epochs} epochs, " if self.trains_body else ""
        speed = f"{self.per_example * 1e3:.1f} ms per example forward on this machine"
        return f"about {duration(self.seconds)} ({epochs}{speed})"


def passes(splits: Splits, per_example: float, epoch_examples: int) -> tuple[float, float, float]:
    """Seconds of the formula's parts: the cached pass over every split, one training epoch
    (with its validation pass) and the test pass — the last two only when the body trains."""
    once = per_example * (len(splits.train) + len(splits.val) + len(splits.test))
    epoch = per_example * (BACKWARD * epoch_examples + len(splits.val))
    return once, epoch, per_example * len(splits.test)


def estimate(
    config: Config, splits: Splits, per_example: float, trains_body: bool, epoch_examples: int
) -> Estimate:
    """The run's wall time in seconds (the formula in the module docstring)."""
    once, epoch, test = passes(splits, per_example, epoch_examples)
    epochs = config.train.epochs
    seconds = once + (epochs * epoch + test if trains_body else 0.0)
    return Estimate(seconds, per_example, epochs, trains_body)


def epochs_within(
    config: Config, splits: Splits, per_example: float, epoch_examples: int, budget: float
) -> int:
    """The most epochs (at least one) whose estimate stays within `budget` seconds."""
    once, epoch, test = passes(splits, per_example, epoch_examples)
    fitting = int((budget - once - test) // epoch) if epoch > 0 else 1
    return max(1, min(config.train.epochs, fitting))


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
