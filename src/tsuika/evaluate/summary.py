"""The run summary: test metrics, baselines, the gain over the baseline and the verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tsuika.config import Config
from tsuika.data.splits import Splits
from tsuika.evaluate.metrics import paired_bootstrap
from tsuika.evaluate.verdicts import overfitting_verdict, transfer_verdict
from tsuika.methods.base import trained_groups
from tsuika.models.base import AdaptableModel
from tsuika.tasks.base import Arrays, Task
from tsuika.train.distributed import world_size
from tsuika.train.loop import FitResult


def compared_baseline(baselines: dict[str, dict]) -> str | None:
    """The baseline the verdict is judged against: from scratch when it ran (the question
    "did pretraining help?"), else the task's constant prediction."""
    if "scratch" in baselines:
        return "scratch"
    return next(iter(baselines), None)


def build_summary(
    config: Config,
    task: Task,
    splits: Splits,
    model: AdaptableModel,
    result: FitResult,
    predicted: Arrays,
    baselines: dict[str, dict],
    path: Path,
) -> dict:
    truth = task.truth(splits.test)
    trained = sorted(trained_groups(model))
    groups = model.layer_groups()
    summary: dict[str, Any] = {
        "run": str(path),
        "model": config.model,
        "task": task.name,
        "method": config.method,
        "targets": task.to_meta(),
        "data": {
            "train": len(splits.train),
            "validation": len(splits.val),
            "test": len(splits.test),
            "notes": splits.notes,
            "skipped_files": len(splits.skipped),
            "skipped": splits.skipped,
        },
        "parameters": {
            "total": sum(p.numel() for p in model.parameters()),
            "trained": sum(groups[i].size for i in trained),
            "trained_groups": [groups[i].name for i in trained],
        },
        "selection": {"metric": task.selection, "higher_is_better": task.higher_is_better},
        "test": task.test_metrics(truth, predicted),
        "training": {
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            f"best_val_{task.selection}": result.best_score,
            "stopped_early": result.stopped_early,
            "optimizer_steps": result.steps,
            "processes": world_size(),
        },
        "baselines": {
            name: {
                **{k: v for k, v in values.items() if k != "predicted"},
                **task.test_metrics(truth, values["predicted"]),
            }
            for name, values in baselines.items()
        },
        "verdicts": {"overfitting": overfitting_verdict(result.history, result.best_epoch, task)},
    }
    versus = compared_baseline(baselines)
    if versus is not None:
        gain = paired_bootstrap(
            task.per_example(truth, predicted),
            task.per_example(truth, baselines[versus]["predicted"]),
            task.from_mean,
            task.higher_is_better,
            config.baselines.bootstrap,
            config.seed,
        )
        summary["gain"] = {"baseline": versus, "metric": task.selection, **gain}
        summary["verdicts"]["transfer"] = transfer_verdict(summary["gain"], config.method, task)
    return summary
