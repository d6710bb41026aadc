"""What a report is made of, read from a finished run folder: summary.json, metrics.jsonl,
predictions.jsonl and the task recorded in model/meta.json. No model is loaded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsuika.errors import TsuikaError
from tsuika.runs import read_meta
from tsuika.tasks import task_from_meta
from tsuika.tasks.base import Task

REPORT = "report.html"
PREDICTIONS = "predictions.jsonl"


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


def _json_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise TsuikaError(
                f"{path} line {number} is not valid JSON; the run folder is damaged"
            ) from None
    return rows


def read_run(path: str | Path) -> RunFiles:
    """A finished run's files; a missing or unfinished folder is an error naming the fix."""
    path = Path(path)
    if not path.is_dir():
        raise TsuikaError(f"run folder {path} not found")
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        raise TsuikaError(
            f"{path} has no summary.json: the run has not finished (continue it with "
            f"`tsuika train --resume {path}`) or is not a tsuika run folder"
        )
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise TsuikaError(f"{summary_path} is not valid JSON; the run folder is damaged") from None
    if not isinstance(summary, dict) or "test" not in summary or "method" not in summary:
        raise TsuikaError(f"{summary_path} is not a tsuika run summary")
    task = task_from_meta(read_meta(path / "model" / "meta.json")["task"])
    phase = summary["method"]
    history = [r for r in _json_lines(path / "metrics.jsonl") if r.get("phase") == phase]
    return RunFiles(path, summary, history, _json_lines(path / PREDICTIONS), task)
