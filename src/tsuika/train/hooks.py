"""What watches a fit: the points the loop calls, and nothing else.

A hook is any object with some of the five methods of `Hook`; it subclasses `Hook` so that
the points it does not need are the base's no-ops. The metrics log, the progress bars, the
forgetting monitor and `tsuika plan`'s pruning are hooks; so is whatever a caller passes to
`tsuika.api.Training`. Five points on purpose (Lightning's callbacks have about forty): a
hook observes the fit, adds to an epoch's record, may end the fit after an epoch, and adds
sections to the summary; what trains and how is the method's, never a hook's.

Every process of a data-parallel run calls every point: a hook that writes is built inert
outside the main process (the run builds the metrics log and the progress bars so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tsuika.tasks.base import Task
    from tsuika.train.loop import FitResult


@dataclass(frozen=True)
class FitStart:
    """What a fit is about to do, for `Hook.fit_started`."""

    phase: str
    """The phase it trains (the method's name, `scratch`, `trial`, …): metrics.jsonl's `phase`."""
    task: Task
    epochs: int
    """The epochs it plans (1 for a fit with nothing to step)."""
    history: list[dict] = field(default_factory=list)
    """The epochs a resumed fit has already done, from its checkpoint; empty otherwise."""


class Hook:
    """The base of every hook: each point does nothing until a subclass overrides it."""

    def fit_started(self, start: FitStart) -> None:
        """Called once, before the first epoch (after a resume: before the first epoch still
        to run). It may not change the fit; it sees the epochs already done."""

    def epoch_ended(self, record: dict) -> bool:
        """Called after each epoch is trained, validated and judged for early stopping, before
        it is checkpointed and reported. It may add keys to `record` (they are checkpointed,
        logged and kept in the history); returning True ends the fit after this epoch (the
        best epoch so far is kept, as with early stopping)."""
        return False

    def epoch_saved(self, record: dict) -> None:
        """Called after `epoch_ended` and the epoch's checkpoint: `record` is final, and a run
        killed from now on resumes after this epoch. It may not change anything: reports
        (metrics.jsonl, the progress bars) go here, so that none repeats or loses an epoch."""

    def fit_ended(self, result: FitResult) -> None:
        """Called once, after the model is given back the best epoch's weights. It may read
        the model as it will be kept, and `result.history` (every epoch, those before a
        resume too); it may not change the model or the result."""

    def summary(self, summary: dict) -> dict:
        """Called once per run, after the fits, with the summary built so far (read only).
        It returns sections to add to summary.json: a new key is added, a dict under a key
        that holds a dict already (`verdicts`) is merged into it."""
        return {}


def stops(hooks: Sequence[Hook], record: dict) -> bool:
    """Every hook's `epoch_ended`, in order (each sees what those before it added): whether
    any asked to end the fit."""
    stop = False
    for hook in hooks:
        stop = bool(hook.epoch_ended(record)) or stop
    return stop


def add_sections(summary: dict, sections: dict) -> None:
    """`sections` into `summary`: new keys added, a dict merged into the dict already there."""
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(summary.get(key), dict):
            summary[key].update(value)
        else:
            summary[key] = value
