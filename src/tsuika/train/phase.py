"""One phase of a run (the adaptation, or a from-scratch baseline): feeds → precompute what
stays fixed → fit → outputs on the test split. Everything here is shared by every phase."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from tsuika.config import Config
from tsuika.console import warn
from tsuika.data.splits import Examples, Splits
from tsuika.feed import Feed, Pretrained, input_feed
from tsuika.feed.cache import CacheSettings, frozen_pass_settings
from tsuika.methods.base import Method
from tsuika.models.base import AdaptableModel, State
from tsuika.tasks.base import Arrays, Task
from tsuika.train.checkpoint import latest_checkpoint
from tsuika.train.hooks import Hook
from tsuika.train.loop import FitResult, fit
from tsuika.train.progress import Progress


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class PhaseResult:
    fit: FitResult
    predicted: Arrays
    """The task's predictions on the test split."""
    outputs: State
    """The model's outputs on the test split, rows in the split's order."""
    timings: dict[str, float]
    cached: bool
    """Whether the frozen prefix ran once (cached) rather than every epoch."""
    test_lengths: list[int] | None
    """Tokens of each test example (text models), what its cost scales with."""
    train_tokens: int | None = None
    """Tokens in one pass over the training split (text models)."""
    frozen_passes: dict[str, int] | None = None
    """Frozen passes this phase `reused` from the activation store and `computed` (None
    without the store)."""


BeforeFit = Callable[[AdaptableModel, Pretrained], None]
"""Sees the model as it is before training (pretrained weights, new head) and its outputs
on the train, val and test feeds after `precompute`: e.g. a linear probe's features, from
the cached frozen prefix and the same pass LP-FT's head starts from."""


def progress_bars(progress: Progress, phase: str):
    """`CacheSettings.progress` on rich progress bars."""

    def bar(label: str, total: int):
        task = progress.task(f"{phase}: {label}", total)
        return lambda n: progress.advance(task, n)

    return bar


def feed_of(model: AdaptableModel, task: Task, examples: Examples, augment=None) -> Feed:
    """A split's inputs with the task's targets and loss units, at stage 0."""
    return input_feed(model, examples.inputs, task.targets(examples), augment, task.units(examples))


@dataclass
class Prepared:
    """A phase's feeds after `precompute`, and what the model gives on them before training."""

    train: Feed
    val: Feed
    test: Feed | None
    pretrained: Pretrained
    timings: dict[str, float]
    cached: bool


def cache_settings(config: Config, progress: Progress, phase: str, run_path: Path | None):
    rank = os.environ.get("RANK", "0")
    return replace(
        frozen_pass_settings(config.train),
        folder=run_path / "cache" / phase / f"rank{rank}" if run_path else None,
        progress=progress_bars(progress, phase),
    )


def prepare(
    model: AdaptableModel,
    method: Method,
    splits: Splits,
    config: Config,
    cache: CacheSettings,
    phase: str,
    test: bool = True,
) -> Prepared:
    """Every split through what stays fixed (the frozen prefix), once; `test=False` leaves
    the test split untouched (a trial that selects on validation alone)."""
    task, settings = method.task, config.train
    train_feed = feed_of(model, task, splits.train, config.data.augment)
    val_feed = feed_of(model, task, splits.val)
    test_feed = feed_of(model, task, splits.test) if test else None
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if train_feed.augmented and settings.cache != "off" and method.cache_boundary(model) > 0:
        # Augmented inputs differ every epoch: cached activations would be stale. The training
        # data runs through the frozen prefix each time; validation (not augmented) is cached.
        warn(
            f"{phase}: augmentation is on, so training activations are recomputed every "
            "epoch (feature cache used for validation only)"
        )
    train_feed = method.precompute(model, train_feed, cache, "train")
    val_feed = method.precompute(model, val_feed, cache, "val")
    if test_feed is not None:
        test_feed = method.precompute(model, test_feed, cache, "test")
    if settings.balance == "sampler":
        train_feed = replace(train_feed, draw=task.draw_weights(train_feed.targets))
    cached = bool(train_feed.start or val_feed.start)
    if cached:
        timings["cache"] = time.perf_counter() - started
    # Augmented training batches differ every pass, and a method may add or repeat examples
    # (distillation's unlabelled ones, contrastive epochs): the pretrained outputs are of the
    # training split as it is, encoded again only if asked for.
    fixed: Feed | Callable[[], Feed] = train_feed
    if train_feed.augmented or len(train_feed) != len(splits.train):
        fixed = lambda: feed_of(model, task, splits.train)  # noqa: E731
    feeds = {"train": fixed, "val": val_feed}
    if test_feed is not None:
        feeds["test"] = test_feed
    pretrained = Pretrained(model, feeds, cache)
    return Prepared(train_feed, val_feed, test_feed, pretrained, timings, cached)


def run_trial(
    model: AdaptableModel,
    method: Method,
    splits: Splits,
    config: Config,
    cache: CacheSettings,
    max_steps: int | None = None,
    hooks: Sequence[Hook] = (),
) -> FitResult:
    """Train and select on validation without touching the test split, writing nothing:
    one candidate of `tsuika plan`. `max_steps` and `hooks` as in `fit`."""
    prepared = prepare(model, method, splits, config, cache, "trial", test=False)
    method.remember(model, prepared.pretrained)
    method.before_fit(model, prepared.pretrained)
    return fit(
        model,
        method,
        prepared.train,
        prepared.val,
        config.train,
        config.seed,
        hooks,
        "trial",
        max_steps=max_steps,
    )


def run_phase(
    model: AdaptableModel,
    method: Method,
    splits: Splits,
    config: Config,
    progress: Progress,
    phase: str,
    hooks: Sequence[Hook] = (),
    run_path: Path | None = None,
    resume: bool = False,
    before_fit: BeforeFit | None = None,
) -> PhaseResult:
    """Precompute, fit and predict the test split, for a model already on its device and
    `method.prepare`d. Checkpoints go to `<run>/checkpoints/<phase>`; `resume` continues
    from the newest one. The test split goes through the frozen prefix once too: its cached
    activations serve `before_fit` and the final predictions alike. `hooks` watch the fit
    (as in `fit`), and `progress` after them: it shows the caching and the epochs."""
    task = method.task
    cache = cache_settings(config, progress, phase, run_path)
    prepared = prepare(model, method, splits, config, cache, phase)
    train_feed, val_feed, test_feed = prepared.train, prepared.val, prepared.test
    assert test_feed is not None
    timings, pretrained = prepared.timings, prepared.pretrained
    if before_fit is not None:
        with method.unadapted(model):
            before_fit(model, pretrained)
    method.remember(model, pretrained)
    checkpoints = run_path / "checkpoints" / phase if run_path else None
    # A checkpoint holds what `before_fit` set up; without one (stopped before the first, or
    # a fit with nothing to step) it is set up again.
    if not resume or checkpoints is None or latest_checkpoint(checkpoints) is None:
        started = time.perf_counter()
        method.before_fit(model, pretrained)  # e.g. LP-FT's head: part of the adaptation
        timings["head"] = time.perf_counter() - started

    result = fit(
        model,
        method,
        train_feed,
        val_feed,
        config.train,
        config.seed,
        [*hooks, progress],
        phase,
        checkpoints,
        resume,
    )
    timings["fit"] = result.seconds
    started = time.perf_counter()
    outputs = task.gather(model, test_feed)
    timings["test"] = time.perf_counter() - started
    predicted = task.predictions(outputs)
    tokens = sum(train_feed.lengths) if train_feed.lengths else None
    store = cache.store
    passes = {"reused": store.hits, "computed": store.misses} if store is not None else None
    return PhaseResult(
        result, predicted, outputs, timings, prepared.cached, test_feed.lengths, tokens, passes
    )
