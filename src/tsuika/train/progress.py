"""Rich progress bars with ETA, or silence (tests, `progress: false`, non-main processes).
As a hook, one bar per fit, advanced as each epoch is saved."""

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

from tsuika.train.hooks import FitStart, Hook


class Progress(Hook):
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
        self.fitting = 0
        """The bar of the fit under way."""
        self.selection = ""
        """That fit's selection metric, shown after each epoch."""

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

    def fit_started(self, start: FitStart) -> None:
        self.fitting = self.task(start.phase, total=start.epochs)
        self.selection = start.task.selection
        self.advance(self.fitting, len(start.history))

    def epoch_saved(self, record: dict) -> None:
        if self.bars:
            self.advance(self.fitting, info=epoch_words(record, self.selection))


def epoch_words(record: dict, selection: str) -> str:
    """An epoch's progress note: its validation score, or its training loss without one."""
    if f"val_{selection}" in record:
        return f"val {selection} {record[f'val_{selection}']:.3f}"
    return f"train loss {record['train_loss']:.3f}"
