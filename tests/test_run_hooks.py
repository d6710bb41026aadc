"""issue 32, item 4: a run object with hooks. `tsuika.api.Training` holds a run from setup to
report; the loop calls at most five hook points, and a hook given to the run sees the
adaptation's fit, adds to its records, may end it, and adds a section to summary.json."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from tsuika.api import Training, as_config, resumable_config
from tsuika.train.hooks import FitStart, Hook
from tsuika.train.loop import FitResult, Loop


class Recording(Hook):
    """Every call it gets, in order; it adds `extra` to each record and may stop at an epoch."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.calls: list[tuple] = []
        self.records: list[dict] = []

    def fit_started(self, start: FitStart) -> None:
        epochs_done = [r["epoch"] for r in start.history]
        self.calls.append(("fit_started", start.phase, start.epochs, epochs_done))

    def epoch_ended(self, record: dict) -> bool:
        self.calls.append(("epoch_ended", record["epoch"]))
        record["extra"] = 10.0 * record["epoch"]
        return record["epoch"] == self.stop_at

    def epoch_saved(self, record: dict) -> None:
        self.calls.append(("epoch_saved", record["epoch"]))
        self.records.append(dict(record))

    def fit_ended(self, result: FitResult) -> None:
        history = [r["epoch"] for r in result.history]
        self.calls.append(("fit_ended", history, result.stopped_by))

    def summary(self, summary: dict) -> dict:
        epochs = summary["training"]["epochs_run"]
        return {"watched": {"epochs": epochs}, "verdicts": {"watched": {"text": "seen"}}}


def logged(path: Path, phase: str) -> list[dict]:
    lines = (path / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.pop("phase") == phase]


def test_a_hook_sees_the_fit_in_order_adds_to_its_records_and_ends_it(base_config):
    hook = Recording(stop_at=2)
    run = Training(as_config(base_config, {"name": "hooked"}), hooks=[hook]).run()
    assert hook.calls == [
        ("fit_started", "transfer", 5, []),
        ("epoch_ended", 1),
        ("epoch_saved", 1),
        ("epoch_ended", 2),
        ("epoch_saved", 2),
        ("fit_ended", [1, 2], "hook"),
    ]
    assert run.summary["training"]["epochs_run"] == 2
    # What it added was checkpointed and logged with the epoch; it saw the records as logged.
    assert [r["extra"] for r in hook.records] == [10.0, 20.0]
    assert logged(run.path, "transfer") == hook.records
    assert {"val_accuracy", "train_loss", "step"} <= set(hook.records[0])


def test_a_hooks_summary_section_lands_in_summary_json(base_config):
    run = Training(as_config(base_config, {"name": "summarised"}), hooks=[Recording()]).run()
    written = json.loads((run.path / "summary.json").read_text())
    assert written["watched"] == {"epochs": 5}
    # Merged into the verdicts the task gave, not in place of them.
    assert written["verdicts"]["watched"] == {"text": "seen"}
    assert "overfitting" in written["verdicts"]


def test_a_fit_with_nothing_to_step_calls_the_same_points(base_config):
    hook = Recording()
    config = as_config(base_config, {"name": "solved", "head": {"fit": "convex"}})
    run = Training(config, hooks=[hook]).run()
    assert hook.calls == [
        ("fit_started", "transfer", 1, []),
        ("epoch_ended", 1),
        ("epoch_saved", 1),
        ("fit_ended", [1], None),
    ]
    assert logged(run.path, "transfer") == hook.records


def test_a_resumed_fit_starts_with_the_checkpointed_epochs_and_logs_each_once(
    base_config, monkeypatch
):
    calls = {"n": 0}
    step = Loop._optimizer_step

    def interrupted_after_ten(self: Loop) -> None:  # 4 steps an epoch: stops in epoch 3
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        step(self)

    monkeypatch.setattr(Loop, "_optimizer_step", interrupted_after_ten)
    with pytest.raises(KeyboardInterrupt):
        Training(as_config(base_config, {"name": "r"})).run()
    monkeypatch.setattr(Loop, "_optimizer_step", step)
    folder = Path(base_config["output"]) / "r"
    hook = Recording()
    run = Training(resumable_config(folder, None, {}), folder, hooks=[hook]).run()
    assert hook.calls[0] == ("fit_started", "transfer", 5, [1, 2])
    assert [c[1] for c in hook.calls if c[0] == "epoch_ended"] == [3, 4, 5]
    assert [r["epoch"] for r in logged(run.path, "transfer")] == [1, 2, 3, 4, 5]


def test_the_loop_has_at_most_five_hook_points():
    points = [
        name
        for name, member in vars(Hook).items()
        if inspect.isfunction(member) and not name.startswith("_")
    ]
    assert points == ["fit_started", "epoch_ended", "epoch_saved", "fit_ended", "summary"]
    assert len(points) <= 5
    # A capability a hook lacks is the base's no-op: the bare base watches a fit harmlessly.
    assert Hook().epoch_ended({"epoch": 1}) is False and Hook().summary({}) == {}
