"""`metrics.jsonl`: one line per epoch of every phase, appended as the run goes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tsuika.files import append_lines, atomic_file
from tsuika.train.hooks import FitStart, Hook


class MetricsLog(Hook):
    """`metrics.jsonl`: one line per epoch of every phase, only ever appended to.

    A resumed run first reads what the file already holds, then appends the epochs of each
    phase's history that are not there yet — so an interrupted phase neither repeats nor loses
    an epoch, and a finished phase's lines are never rewritten. The one exception: a last
    line torn by a kill mid-write is cut off (its epoch is written again), so the file stays
    one JSON object per line for the report.

    As a hook it writes each fit's epochs under the fit's phase, once saved: a resumed fit's
    checkpointed epochs when it starts, then every epoch.
    """

    def __init__(self, path: Path | None, sink: Callable[[str, dict], None] | None = None) -> None:
        self.path = path
        self.sink = sink
        """Also receives every new record with its phase (experiment tracking)."""
        self.logged: dict[str, int] = {}
        """Last epoch written, per phase."""
        self.write = self.writer("training")
        """The writer of the fit under way."""
        if path is not None and path.is_file():
            whole = _without_torn_tail(path)
            for line in whole.decode("utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                    phase, epoch = record["phase"], int(record["epoch"])
                except (ValueError, KeyError, TypeError):
                    continue
                self.logged[phase] = max(self.logged.get(phase, 0), epoch)

    def writer(self, phase: str):
        def write(history: list[dict]) -> None:
            new = [r for r in history if r["epoch"] > self.logged.get(phase, 0)]
            if not new or self.path is None:
                return
            append_lines(self.path, [json.dumps({"phase": phase, **r}) + "\n" for r in new])
            self.logged[phase] = new[-1]["epoch"]
            if self.sink is not None:
                for record in new:
                    self.sink(phase, record)

        return write

    def fit_started(self, start: FitStart) -> None:
        self.write = self.writer(start.phase)
        self.write(start.history)  # epochs checkpointed but not yet logged when killed

    def epoch_saved(self, record: dict) -> None:
        self.write([record])


def _without_torn_tail(path: Path) -> bytes:
    """The file's complete lines; a torn last line (no newline: killed mid-write) is cut off
    the file itself."""
    data = path.read_bytes()
    if data.endswith(b"\n") or not data:
        return data
    whole = data[: data.rfind(b"\n") + 1]
    with atomic_file(path) as tmp:
        tmp.write_bytes(whole)
    return whole
