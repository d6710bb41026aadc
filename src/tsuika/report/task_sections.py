"""Report sections that belong to a task, registered by task name: a new task adds its own
builder here (a causal LM: generations before and after; text-to-image: image grids)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from tsuika.report import charts
from tsuika.report.files import RunFiles
from tsuika.report.html import Section, chart, table
from tsuika.tasks.classify import Classify


def _column_values(records: list[dict], key: str, column: str, several: bool) -> list:
    return [r[key][column] if several else r[key] for r in records]


def classification(run: RunFiles) -> list[Section]:
    """Per label column: the confusion matrix and each class's precision, recall and F1."""
    task = run.task
    assert isinstance(task, Classify)
    if not run.records:
        return []
    several = len(task.columns) > 1
    body = ""
    for column in task.columns:
        labels = task.labels[column]
        truth = _column_values(run.records, "truth", column, several)
        predicted = _column_values(run.records, "predicted", column, several)
        matrix = confusion_matrix(truth, predicted, labels=labels)
        title = f"confusion matrix — {column}" if several else "confusion matrix"
        body += chart(
            f"confusion-{column}",
            charts.confusion(matrix, labels, title),
            "rows: true class; columns: predicted; shading: share of the row",
        )
        precision, recall, f1, support = precision_recall_fscore_support(
            truth, predicted, labels=labels, zero_division=0
        )
        rows = [
            [label, float(p), float(r), float(f), int(s)]
            for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        ]
        body += table(
            [
                f"class ({column})" if several else "class",
                "precision",
                "recall",
                "F1",
                "test examples",
            ],
            rows,
            [False, True, True, True, True],
        )
    return [Section("classes", "Classes", body)]


def regression(run: RunFiles) -> list[Section]:
    """Predicted against true values, and the error's spread."""
    if not run.records:
        return []
    column = run.task.columns[0]
    truth = np.array([float(r["truth"]) for r in run.records])
    predicted = np.array([float(r["predicted"]) for r in run.records])
    errors = predicted - truth
    svg = charts.predicted_vs_true(truth, predicted, column)
    rows = [
        ["mean error (bias)", float(errors.mean())],
        ["median absolute error", float(np.median(np.abs(errors)))],
        ["largest absolute error", float(np.abs(errors).max())],
    ]
    body = chart("predicted-vs-true", svg, "each dot is one test example") + table(
        ["", column], rows, [False, True]
    )
    return [Section("errors", "Errors", body)]


TASK_SECTIONS: dict[str, Callable[[RunFiles], list[Section]]] = {
    "classify": classification,
    "multi-task": classification,
    "regression": regression,
}


def task_sections(run: RunFiles) -> list[Section]:
    builder = TASK_SECTIONS.get(run.task.name)
    return builder(run) if builder else []
