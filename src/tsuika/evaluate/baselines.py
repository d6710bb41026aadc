"""Baselines every summary carries: the task's constant prediction (majority class, training
mean), and the same architecture trained from scratch on the same data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from tsuika.config import Config, build_config
from tsuika.data.splits import Splits
from tsuika.methods import Finetune
from tsuika.models import model_for
from tsuika.tasks.base import Task
from tsuika.train.distributed import training_device
from tsuika.train.metrics_log import MetricsLog
from tsuika.train.phase import run_phase, seed_everything
from tsuika.train.progress import Progress


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
    task: Task,
    splits: Splits,
    progress: Progress,
    log: MetricsLog,
    path: Path | None = None,
    resume: bool = False,
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Each baseline's `predicted` test targets and its details; and the seconds taken."""
    baselines: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    if config.baselines.majority:
        name, predicted, details = task.constant_baseline(splits.train, len(splits.test))
        baselines[name] = {**details, "predicted": predicted}
    if config.baselines.scratch:
        started = time.perf_counter()
        seed_everything(config.seed)
        scratch = scratch_config(config)
        model = model_for(config, lambda width: task.head(width, config.head), pretrained=False)
        standard_batchnorm_momentum(model)
        model.to(training_device())
        method = Finetune(scratch, task)
        method.prepare(model)
        phase = run_phase(model, method, splits, scratch, progress, log, "scratch", path, resume)
        baselines["scratch"] = {
            "epochs": len(phase.fit.history),
            "best_epoch": phase.fit.best_epoch,
            "predicted": phase.predicted,
        }
        timings["scratch"] = time.perf_counter() - started
    return baselines, timings
