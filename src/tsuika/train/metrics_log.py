"""`metrics.jsonl`: one line per epoch of every phase, appended as the run goes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


class MetricsLog:
    """`metrics.jsonl`: one line per epoch of every phase, only ever appended to.

    A resumed run first reads what the file already holds, then appends the epochs of each
    phase's history that are not there yet — so an interrupted phase neither repeats nor loses
    an epoch, and a finished phase's lines are never rewritten.
    """

    def __init__(self, path: Path | None, sink: Callable[[str, dict], None] | None = None) -> None:
        self.path = path
        self.sink = sink
        """Also receives every new record with its phase (experiment tracking)."""
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
            if self.sink is not None:
                for record in new:
                    self.sink(phase, record)

        return write
