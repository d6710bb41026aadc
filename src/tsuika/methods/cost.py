"""What a run will cost, estimated before it starts: the examples it passes through the
network, times the seconds one example takes on this machine, measured on a sample of the
run's own inputs. Machines differ several-fold (an AVX2 core runs a matmul at about a sixth
of an AVX-512 one), and a training step's cost over a forward pass differs with the model,
the input length and the layers that train, so both speeds are measured, never assumed.

    seconds ≈ forward × (cached pass over every split + test examples × trains)
            + epochs × (step × training examples + forward × validation examples) × trains

`forward` is one example's eval-mode pass through every stage but the head (length-sorted
batches, as the cached pass and evaluation run); `step` is one example's share of a training
step (train mode, a shuffled batch of `train.batch_size`, forward and backward through the
stages that train). `trains` is 1 when layers below the head train and 0 for a head on
cached features. Not counted: the optimizer's update (small beside the backward pass for the
models tsuika runs on a CPU) and the classical baselines (seconds)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from tsuika.config import Config
from tsuika.data.splits import Splits
from tsuika.feed import gather_outputs, input_feed
from tsuika.models.base import AdaptableModel

SAMPLE = 48
"""Training inputs timed to measure the forward speed (after one warm-up batch)."""


@dataclass
class Speed:
    """Seconds per example on this machine, measured on the run's own training inputs."""

    forward: float
    step: float = 0.0
    """0 when nothing below the head trains (not measured)."""


def measure_speed(
    model: AdaptableModel, splits: Splits, config: Config, trains_from: int | None
) -> Speed:
    """The forward speed, and the training step's when the stages from `trains_from` on
    train (None: only the head trains)."""
    inputs = splits.train.inputs
    sample = random.Random(config.seed).sample(range(len(inputs)), min(SAMPLE, len(inputs)))
    chosen = [inputs[i] for i in sample]
    if not chosen:
        return Speed(0.0)
    was_training = model.training
    device = next(model.parameters()).device
    # The timed step runs dropout: on a fork of the random state, so a run trains the same
    # whether or not it was measured first.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            speed = Speed(seconds_per_example(model, chosen))
            if trains_from is not None:
                speed.step = seconds_per_step_example(model, chosen, config, trains_from)
        finally:
            model.train(was_training)
    return speed


def seconds_per_example(model: AdaptableModel, chosen: list) -> float:
    """Seconds one input takes through every stage but the head, in eval mode."""
    stop = model.num_stages - 1
    gather_outputs(model, input_feed(model, chosen[:8]), batch_size=8, stop=stop)  # warm-up
    started = time.perf_counter()
    gather_outputs(model, input_feed(model, chosen), batch_size=32, stop=stop)
    return (time.perf_counter() - started) / len(chosen)


def seconds_per_step_example(
    model: AdaptableModel, chosen: list, config: Config, trains_from: int
) -> float:
    """One example's share of a training step: a batch of `train.batch_size` inputs in the
    sampled (shuffled) order, the frozen stages before `trains_from` run without gradients
    (a run caches them), the rest forward and backward in train mode; gradients are dropped
    afterwards, so the model is as it was."""
    size = min(config.train.batch_size, len(chosen))
    device = next(model.parameters()).device

    def step(count: int) -> float:
        feed = input_feed(model, chosen[:count])
        batch = feed.batch(list(range(count))).to(device)
        model.train()
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.train.bf16)
        with autocast:
            with torch.no_grad():
                state = model(batch.state, 0, trains_from) if trains_from else batch.state
            started = time.perf_counter()
            outputs = model(state, trains_from, model.num_stages - 1)
            graded = [value.float().sum() for value in outputs.values() if value.requires_grad]
            if graded:
                torch.stack(graded).sum().backward()
        seconds = time.perf_counter() - started
        for parameter in model.parameters():
            parameter.grad = None
        return seconds

    step(min(4, size))  # warm-up: the first backward allocates
    return step(size) / size


@dataclass
class Estimate:
    seconds: float
    speed: Speed
    epochs: int
    trains_body: bool

    def words(self) -> str:
        epochs = f"{self.epochs} epochs, " if self.trains_body else ""
        speed = f"{self.speed.forward * 1e3:.1f} ms per example forward"
        if self.trains_body:
            speed += f", {self.speed.step * 1e3:.1f} ms per training example"
        return f"about {duration(self.seconds)} ({epochs}{speed} on this machine)"


def passes(splits: Splits, speed: Speed, epoch_examples: int) -> tuple[float, float, float]:
    """Seconds of the formula's parts: the cached pass over every split, one training epoch
    (with its validation pass) and the test pass — the last two only when the body trains."""
    once = speed.forward * (len(splits.train) + len(splits.val) + len(splits.test))
    epoch = speed.step * epoch_examples + speed.forward * len(splits.val)
    return once, epoch, speed.forward * len(splits.test)


def estimate(config: Config, splits: Splits, speed: Speed, epoch_examples: int) -> Estimate:
    """The run's wall time in seconds (the formula in the module docstring); the body trains
    when the step speed was measured."""
    once, epoch, test = passes(splits, speed, epoch_examples)
    epochs = config.train.epochs
    trains_body = speed.step > 0
    seconds = once + (epochs * epoch + test if trains_body else 0.0)
    return Estimate(seconds, speed, epochs, trains_body)


def epochs_within(
    config: Config, splits: Splits, speed: Speed, epoch_examples: int, budget: float
) -> int:
    """The most epochs (at least one) whose estimate stays within `budget` seconds."""
    once, epoch, test = passes(splits, speed, epoch_examples)
    fitting = int((budget - once - test) // epoch) if epoch > 0 else 1
    return max(1, min(config.train.epochs, fitting))


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
