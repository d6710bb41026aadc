"""The run summary: test metrics, baselines, the gain over scratch and the verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tsuika.config import Config
from tsuika.data.splits import Splits
from tsuika.evaluate.metrics import classification_metrics, paired_bootstrap
from tsuika.evaluate.verdicts import overfitting_verdict, transfer_verdict
from tsuika.models.base import AdaptableModel
from tsuika.train.distributed import world_size
from tsuika.train.loop import FitResult


def build_summary(
    config: Config,
    splits: Splits,
    model: AdaptableModel,
    result: FitResult,
    truth: np.ndarray,
    predicted: np.ndarray,
    baselines: dict[str, dict],
    path: Path,
    trained: list[int],
) -> dict:
    groups = model.layer_groups()
    summary: dict[str, Any] = {
        "run": str(path),
        "model": config.model,
        "method": config.method,
        "labels": splits.labels,
        "data": {
            "train": len(splits.train),
            "validation": len(splits.val),
            "test": len(splits.test),
            "notes": splits.notes,
            "skipped_files": len(splits.skipped),
            "skipped": splits.skipped,
        },
        "parameters": {
            "total": sum(g.size for g in groups),
            "trained": sum(groups[i].size for i in trained),
            "trained_groups": [groups[i].name for i in trained],
        },
        "test": classification_metrics(truth, predicted),
        "training": {
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "best_val_accuracy": result.best_val_accuracy,
            "stopped_early": result.stopped_early,
            "optimizer_steps": result.steps,
            "processes": world_size(),
        },
        "baselines": {
            name: {k: v for k, v in values.items() if k != "predicted"}
            for name, values in baselines.items()
        },
        "verdicts": {},
    }
    fit_verdict = overfitting_verdict(result.history, result.best_epoch)
    summary["verdicts"]["overfitting"] = fit_verdict
    if "scratch" in baselines:
        gain = paired_bootstrap(
            truth,
            predicted,
            baselines["scratch"]["predicted"],
            config.baselines.bootstrap,
            config.seed,
        )
        summary["gain_over_scratch"] = gain
        summary["verdicts"]["transfer"] = transfer_verdict(gain, config.method)
    return summary
