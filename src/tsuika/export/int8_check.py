"""Whether the int8 copy still does the run's task: its metrics on the run's own validation
and test splits beside the float32 graph's.

How far int8 moves the outputs depends on the CPU that quantises and runs it (ONNX Runtime's
u8s8 kernels saturate on AVX2 without VNNI: outputs moved by 0.545 there, 0.019 on a VNNI CPU)
and on the model; a logit difference alone does not say whether answers changed. So the copy
is judged by what the run is judged by: its selection metric on the same examples. A copy
that loses more than `INT8_TOLERANCE` is not kept (the float32 export is).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from tsuika.data.reading import load_splits
from tsuika.data.splits import Examples
from tsuika.errors import TsuikaError
from tsuika.export.graph import is_image, onnx_outputs
from tsuika.feed import input_feed
from tsuika.feed.batches import sorted_batches
from tsuika.finished_run import Run
from tsuika.model_kinds import IMAGE_ENCODER, TEXT_ENCODER
from tsuika.models.base import AdaptableModel
from tsuika.tasks.base import Arrays, Task
from tsuika.tasks.classify import Classify

INT8_TOLERANCE = 0.01
"""The most the int8 copy may lose of the selection metric on any split, by default
(`tsuika export --int8-tolerance`): 1 point of a share (accuracy, macro-F1); for another
metric (RMSE), 1 % of the float32 figure."""


def run_splits(run: Run) -> tuple[dict[str, Examples], str | None]:
    """The run's validation and test examples, read again from its data as it trained (a
    copy of its task encodes them), or why they cannot be."""
    task = copy.deepcopy(run.task)
    kind = IMAGE_ENCODER if is_image(run.model) else TEXT_ENCODER
    try:
        splits = load_splits(run.data, kind, task.columns, task)
    except TsuikaError as error:
        return {}, f"the run's data could not be read again ({error})"
    if task.to_meta() != run.task.to_meta():
        return {}, "the run's data changed since it trained (its labels or scale differ)"
    found = {"validation": splits.val, "test": splits.test}
    return {name: examples for name, examples in found.items() if len(examples)}, None


def graph_predictions(path: Path, model: AdaptableModel, task: Task, examples: Examples) -> Arrays:
    """The task's predictions of an ONNX graph over `examples`, rows in their order."""
    feed = input_feed(model, examples.inputs)
    batches = list(feed.batches(sorted_batches(feed.lengths or [1] * len(feed), 64)))
    outputs = onnx_outputs(path, model, [batch.state for batch in batches])
    rows: list[np.ndarray | None] = [None] * len(feed)
    for batch, out in zip(batches, outputs, strict=True):
        for index, row in zip(batch.indices, out, strict=True):
            rows[index] = row
    output = np.stack(rows)
    if not isinstance(task, Classify):  # a regression's prediction, in the target's unit
        return {task.columns[0]: output[:, 0].astype(np.float64)}
    cuts = np.cumsum(task.sizes)[:-1]
    parts = np.split(output, cuts, -1)
    return {column: part.argmax(-1) for column, part in zip(task.columns, parts, strict=True)}


def allowed_loss(task: Task, fp32: float, tolerance: float) -> float:
    return tolerance if task.selection_is_share else tolerance * abs(fp32)


def task_check(
    run: Run,
    model: AdaptableModel,
    task: Task,
    fp32: Path,
    int8: Path,
    tolerance: float | None = None,
) -> dict[str, Any]:
    """Both graphs' metrics on each split, the loss in the selection metric, and `kept`:
    whether every split's loss is within `allowed_loss` (True when nothing could be
    measured, with `not_measured` saying why)."""
    tolerance = INT8_TOLERANCE if tolerance is None else tolerance
    splits, problem = run_splits(run)
    if problem:
        return {"kept": True, "not_measured": problem}
    report: dict[str, Any] = {"metric": task.selection, "splits": {}, "kept": True}
    for name, examples in splits.items():
        truth = task.truth(examples)
        figures = {
            precision: task.test_metrics(truth, graph_predictions(path, model, task, examples))
            for precision, path in (("fp32", fp32), ("int8", int8))
        }
        before, after = figures["fp32"][task.selection], figures["int8"][task.selection]
        loss = (before - after) if task.higher_is_better else (after - before)
        allowed = allowed_loss(task, before, tolerance)
        report["splits"][name] = {
            "examples": len(examples),
            **figures,
            "loss": loss,
            "allowed": allowed,
        }
        report["kept"] = report["kept"] and loss <= allowed
    return report


def refusal(report: dict[str, Any], out: Path) -> str | None:
    """The one-line reason an int8 copy was not kept (None: it was)."""
    if report.get("kept", True):
        return None
    metric = report["metric"]
    worst_name, worst = max(report["splits"].items(), key=lambda item: item[1]["loss"])
    return (
        f"the int8 copy loses {worst['loss']:.4g} {metric} on the {worst_name} split "
        f"({worst['fp32'][metric]:.4f} → {worst['int8'][metric]:.4f}, more than the "
        f"{worst['allowed']:.3g} allowed): not kept; the float32 model.onnx is in {out} "
        "(--int8-tolerance accepts a larger loss)"
    )


def figures(report: dict[str, Any]) -> str:
    """The selection metric, float32 → int8, on each split measured ("" when none was)."""
    metric = report.get("metric")
    return ", ".join(
        f"{name} {split['fp32'][metric]:.4f} → {split['int8'][metric]:.4f}"
        for name, split in report.get("splits", {}).items()
    )


def in_words(report: dict[str, Any]) -> str:
    """What the int8 check found, in one line for the command's output."""
    if "not_measured" in report:
        return f"int8: kept, its task metric not measured: {report['not_measured']}"
    return f"int8: kept; {report['metric']} float32 → int8: {figures(report)}"
