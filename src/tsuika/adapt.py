"""One adaptation: data → feeds → cache what stays frozen → fit → test predictions.

`train()` in `tsuika.api` calls `adapt` for the chosen method and again for the from-scratch
baseline; everything here is shared by both.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

from tsuika.config import Config, build_config
from tsuika.data.images import load_image_splits
from tsuika.data.splits import Examples, Splits
from tsuika.data.text import load_text_splits
from tsuika.evaluate.baselines import majority_predictions
from tsuika.evaluate.metrics import classification_metrics
from tsuika.methods import Finetune, Method
from tsuika.models import modality_of, model_for
from tsuika.models.base import AdaptableModel
from tsuika.train.cache import cache_boundary
from tsuika.train.distributed import is_main_process, training_device
from tsuika.train.feed import Feed
from tsuika.train.loop import FitResult, fit, predict_probs
from tsuika.train.progress import Progress


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def input_feed(model: AdaptableModel, examples: Examples, augment=None) -> Feed:
    """Raw inputs, encoded once (tokenised / decoded), entering the model at stage 0.
    With an active `augment` (images), batches are randomly augmented on every pass."""
    preprocess = model.preprocess
    items = preprocess.encode(examples.inputs)
    ragged = getattr(preprocess, "ragged", True)
    lengths = [preprocess.length(item) for item in items] if ragged else None
    labels = torch.tensor(examples.labels, dtype=torch.long)
    if augment is not None and augment.active:
        return Feed(items, labels, 0, preprocess.augmented(augment), lengths, augmented=True)
    return Feed(items, labels, 0, preprocess.collate, lengths)


def load_splits(config: Config) -> Splits:
    """The data for the model's kind; bad input fails here, before anything is written."""
    if modality_of(config.model) == "image":
        splits = load_image_splits(config.data)
        if splits.skipped:
            shown = "\n  ".join(splits.skipped[:10])
            more = f"\n  … and {len(splits.skipped) - 10} more" if len(splits.skipped) > 10 else ""
            warn(
                f"skipped {len(splits.skipped)} file(s) (data.strict=true makes this an "
                f"error):\n  {shown}{more}"
            )
        return splits
    return load_text_splits(config.data)


def warn(message: str) -> None:
    if is_main_process():
        Console(stderr=True, soft_wrap=True).print(f"[yellow]warning:[/yellow] {escape(message)}")


class MetricsLog:
    """`metrics.jsonl`: one line per epoch of every phase, only ever appended to.

    A resumed run first reads what the file already holds, then appends the epochs of each
    phase's history that are not there yet — so an interrupted phase neither repeats nor loses
    an epoch, and a finished phase's lines are never rewritten.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.logged: dict[str, int] = {}
        """Last epoch written, per phase."""
        self.torn = False
        """The file ends without a newline (killed mid-write): start on a fresh line."""
        if path is not None and path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            self.torn = bool(text) and not text.endswith("\n")
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                    phase, epoch = record["phase"], int(record["epoch"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line of a killed run: its epoch is written again
                self.logged[phase] = max(self.logged.get(phase, 0), epoch)

    def writer(self, phase: str):
        def write(history: list[dict]) -> None:
            new = [r for r in history if r["epoch"] > self.logged.get(phase, 0)]
            if not new or self.path is None:
                return
            with open(self.path, "a", encoding="utf-8") as handle:
                if self.torn:
                    handle.write("\n")
                    self.torn = False
                for record in new:
                    handle.write(json.dumps({"phase": phase, **record}) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self.logged[phase] = new[-1]["epoch"]

        return write


def adapt(
    model: AdaptableModel,
    method: Method,
    splits: Splits,
    config: Config,
    progress: Progress,
    log: MetricsLog,
    phase: str,
    run_path: Path | None = None,
    resume: bool = False,
) -> tuple[FitResult, np.ndarray, dict[str, float]]:
    """Prepare, cache what stays frozen, fit, and predict the test split. Returns the fit
    result, test predictions and timings (seconds). Checkpoints go to
    `<run>/checkpoints/<phase>`; `resume` continues from the newest one."""
    rank = os.environ.get("RANK", "0")
    spill_dir = run_path / "cache" / phase / f"rank{rank}" if run_path else None
    checkpoints = run_path / "checkpoints" / phase if run_path else None
    train_cfg = config.train
    method.prepare(model)
    model.to(training_device())  # cache on the accelerator too, not only train there
    train_feed = input_feed(model, splits.train, config.data.augment)
    val_feed = input_feed(model, splits.val)
    timings: dict[str, float] = {}
    boundary = method.cache_boundary(model) if train_cfg.cache != "off" else 0
    if boundary > 0 and train_feed.augmented:
        # Augmented inputs differ every epoch: cached activations would be stale. The training
        # data runs through the frozen prefix each time; validation (not augmented) is cached.
        warn(
            f"{phase}: augmentation is on, so training activations are recomputed every "
            "epoch (feature cache used for validation only)"
        )
    if boundary > 0:
        started = time.perf_counter()

        def cached(feed: Feed, name: str) -> Feed:
            return cache_boundary(
                model,
                feed,
                boundary,
                max(64, train_cfg.batch_size),
                train_cfg.cache,
                train_cfg.cache_memory_mb,
                spill_dir / name if spill_dir else None,
                progress,
                f"{phase}: caching {name}",
            )

        if not train_feed.augmented:
            train_feed = cached(train_feed, "train")
        val_feed = cached(val_feed, "val")
        timings["cache"] = time.perf_counter() - started

    result = fit(
        model,
        method,
        train_feed,
        val_feed,
        train_cfg,
        config.seed,
        log.writer(phase),
        progress,
        phase,
        checkpoints,
        resume,
    )
    timings["fit"] = result.seconds
    started = time.perf_counter()
    test_feed = input_feed(model, splits.test)
    predicted = predict_probs(model, test_feed).argmax(-1).numpy()
    timings["test"] = time.perf_counter() - started
    return result, predicted, timings


def scratch_config(config: Config) -> Config:
    tree = config.model_dump()
    tree["train"].update(
        lr=config.baselines.scratch_lr,
        backbone_lr=config.baselines.scratch_lr,
        epochs=config.baselines.scratch_epochs,
        cache="off",
    )
    tree["method"] = "finetune"
    tree["finetune"] = {"freeze": 0}
    return build_config(tree)


def standard_batchnorm_momentum(model: torch.nn.Module) -> None:
    """Give a from-scratch model PyTorch's usual BatchNorm momentum (0.1).

    Pretrained TF-style networks (EfficientNet: 0.01) keep running statistics that move
    slowly, which suits fine-tuning; trained from random initialisation for a few dozen steps,
    their running statistics stay near the initial (0, 1) and evaluation collapses to one
    class (measured: validation at chance while training accuracy reached 0.64). The baseline
    should be a fair from-scratch model, not that artefact.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.1


def run_baselines(
    config: Config,
    splits: Splits,
    progress: Progress,
    log: MetricsLog,
    truth: np.ndarray,
    path: Path | None = None,
    resume: bool = False,
) -> tuple[dict[str, dict], dict[str, float]]:
    baselines: dict[str, dict] = {}
    timings: dict[str, float] = {}
    if config.baselines.majority:
        label, predicted = majority_predictions(splits.train.labels, len(truth))
        baselines["majority"] = {
            **classification_metrics(truth, predicted),
            "label": splits.labels[label],
            "predicted": predicted,
        }
    if config.baselines.scratch:
        started = time.perf_counter()
        seed_everything(config.seed)
        scratch_cfg = scratch_config(config)
        model = model_for(config, len(splits.labels), pretrained=False)
        standard_batchnorm_momentum(model)
        method = Finetune(scratch_cfg)
        result, predicted, _ = adapt(
            model, method, splits, scratch_cfg, progress, log, "scratch", path, resume
        )
        baselines["scratch"] = {
            **classification_metrics(truth, predicted),
            "epochs": len(result.history),
            "best_epoch": result.best_epoch,
            "predicted": predicted,
        }
        timings["scratch"] = time.perf_counter() - started
    return baselines, timings
