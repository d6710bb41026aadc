"""The run summary: test metrics, every baseline with the gain over it, the verdicts, what
trained and the learning-rate plan (everything the report draws, so it can be rebuilt from
the run folder alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tsuika.config import Config
from tsuika.data.splits import Splits
from tsuika.evaluate.baselines import Baseline
from tsuika.evaluate.metrics import paired_bootstrap
from tsuika.evaluate.verdicts import overfitting_verdict, transfer_verdict
from tsuika.methods.base import trained_groups
from tsuika.models.base import AdaptableModel
from tsuika.tasks.base import Arrays, Task
from tsuika.train.distributed import world_size
from tsuika.train.loop import FitResult


def strongest(baselines: dict[str, dict], task: Task) -> str | None:
    """The baseline with the best test score in the selection metric (ties: the first):
    what the verdict is judged against, so a gain is never claimed over a weak baseline
    while a strong one beats the run."""
    best = None
    for name, values in baselines.items():
        if best is None or task.better(values[task.selection], baselines[best][task.selection]):
            best = name
    return best


def build_summary(
    config: Config,
    task: Task,
    splits: Splits,
    model: AdaptableModel,
    result: FitResult,
    predicted: Arrays,
    baselines: list[Baseline],
    path: Path,
    head_only: bool = False,
) -> dict:
    """`head_only`: the method trained nothing but the new head (its verdict can then name
    the head, not pretraining, when a probe on the same features beats it)."""
    truth = task.truth(splits.test)
    summary: dict[str, Any] = {
        "run": str(path),
        "model": config.model,
        "task": task.name,
        "method": config.method,
        "model_kind": model.model_kind,
        "targets": task.to_meta(),
        "data": {
            "train": len(splits.train),
            "validation": len(splits.val),
            "test": len(splits.test),
            "notes": splits.notes,
            "skipped_files": len(splits.skipped),
            "skipped": splits.skipped,
        },
        "parameters": parameters(model, result),
        "selection": {"metric": task.selection, "higher_is_better": task.higher_is_better},
        "test": task.test_metrics(truth, predicted),
        "training": {
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            f"best_val_{task.selection}": result.best_score,
            "stopped_early": result.stopped_early,
            "optimizer_steps": result.steps,
            "processes": world_size(),
            "sharded": config.train.fsdp,  # FSDP: weights split across the processes
            "schedule": result.schedule,
        },
        "baselines": {},
        "verdicts": {"overfitting": overfitting_verdict(result.history, result.best_epoch, task)},
    }
    mine = task.selection_statistics(truth, predicted)
    for baseline in baselines:
        gain = paired_bootstrap(
            mine,
            task.selection_statistics(truth, baseline.predicted),
            task.from_mean,
            task.higher_is_better,
            config.baselines.bootstrap,
            config.seed,
        )
        summary["baselines"][baseline.name] = {
            "title": baseline.title,
            "pretrained": baseline.pretrained,
            "seconds": baseline.seconds,
            **baseline.details,
            **task.test_metrics(truth, baseline.predicted),
            "gain": gain,
        }
    versus = strongest(summary["baselines"], task)
    if versus is not None:
        compared = summary["baselines"][versus]
        summary["gain"] = {"baseline": versus, "metric": task.selection, **compared["gain"]}
        probe = summary["baselines"].get("probe")
        summary["verdicts"]["transfer"] = transfer_verdict(
            summary["gain"],
            config.method,
            task,
            compared["title"],
            compared["pretrained"],
            head_only=head_only,
            over_probe=probe["gain"] if probe else None,
        )
    return summary


def parameters(model: AdaptableModel, result: FitResult) -> dict[str, Any]:
    """Totals and every layer group: its size, how much of it trained, at what base rate
    (adapters: the adapters' rate, on the groups that hold them)."""
    trained = trained_groups(model)
    groups = model.layer_groups()
    rates = result.schedule.get("rates", {})

    def trainable(group) -> int:
        return sum(p.numel() for p in group.parameters() if p.requires_grad)

    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trained": sum(trainable(g) for g in groups),
        "trained_groups": [groups[i].name for i in sorted(trained)],
        "groups": [
            {
                "name": g.name,
                "parameters": g.size,
                "trained": g.index in trained,
                "trainable": trainable(g),
                "lr": rates.get(g.name, rates.get("adapters") if g.index in trained else None),
            }
            for g in groups
        ],
    }
