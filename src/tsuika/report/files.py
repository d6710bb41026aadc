"""What a report is made of, read from a finished run folder: summary.json, metrics.jsonl,
predictions.jsonl (checked by `tsuika.run_files`) and the task recorded in model/meta.json.
No model is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsuika.errors import TsuikaError
from tsuika.run_files import (
    METRICS,
    PREDICTIONS,
    SUMMARY,
    read_metrics,
    read_predictions,
    read_summary,
)
from tsuika.run_folder import read_meta
from tsuika.tasks import task_from_meta
from tsuika.tasks.base import Task

REPORT = "report.html"


@dataclass
class RunFiles:
    path: Path
    summary: dict[str, Any]
    history: list[dict]
    """The adapted run's epochs (the phase named after its method)."""
    records: list[dict]
    """One per test example (empty when the run predates predictions.jsonl)."""
    task: Task

    @property
    def name(self) -> str:
        return self.path.name


def read_run(path: str | Path) -> RunFiles:
    """A finished run's files; a missing or unfinished folder is an error naming the fix."""
    path = Path(path)
    if not path.is_dir():
        raise TsuikaError(f"run folder {path} not found")
    summary_path = path / SUMMARY
    if not summary_path.is_file():
        raise TsuikaError(
            f"{path} has no summary.json: the run has not finished (continue it with "
            f"`tsuika train --resume {path}`) or is not a tsuika run folder"
        )
    summary = read_summary(summary_path)
    task = task_from_meta(read_meta(path / "model" / "meta.json")["task"])
    phase = summary["method"]
    history = [r for r in read_metrics(path / METRICS) if r["phase"] == phase]
    return RunFiles(path, summary, history, read_predictions(path / PREDICTIONS, task), task)
