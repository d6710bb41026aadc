"""Rich progress bars with ETA, or silence (tests, `progress: false`, non-main processes)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(self, enabled: bool = True) -> None:
        self.bars = (
            RichProgress(
                TextColumn("{task.description:<22}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(stderr=True),
                transient=False,
            )
            if enabled
            else None
        )

    def __enter__(self) -> Progress:
        if self.bars:
            self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bars:
            self.bars.stop()

    def task(self, description: str, total: int) -> int:
        return self.bars.add_task(description, total=total, info="") if self.bars else 0

    def advance(self, task: int, amount: int = 1, info: str | None = None) -> None:
        if self.bars:
            fields = {"info": info} if info is not None else {}
            self.bars.update(task, advance=amount, **fields)
