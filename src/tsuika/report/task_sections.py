"""Report sections that belong to a task: the built-in tasks' builders here, found through
the task's class (so `multi-task`, or a plugin's subclass of `Classify`, gets the
classification sections); a task of its own (a plugin) gives its sections with a
`report_sections(run)` method instead."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from tsuika.report import charts
from tsuika.report.files import RunFiles
from tsuika.report.html import Section, chart, table
from tsuika.tasks.causal_lm import CausalLM
from tsuika.tasks.classify import Classify
from tsuika.tasks.regression import Regression


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


def answers(run: RunFiles) -> list[Section]:
    """A language model's answers against the base model's: how many it fixed and broke,
    and examples of each (answers shown as the greedy next tokens given the true answer so
    far: the generated answer when right, up to its first wrong token otherwise)."""
    records = [r for r in run.records if "base" in r.get("baselines", {})]
    if not records:
        return []
    base_right = [r["baselines"]["base"] == r["truth"] for r in records]
    right = [r["score"] >= 1 for r in records]
    groups = {
        "fixed (base wrong, adapted right)": [],
        "broken (base right, adapted wrong)": [],
    }
    counts = {"both right": 0, "both wrong": 0}
    for record, was, now in zip(records, base_right, right, strict=True):
        if now and not was:
            groups["fixed (base wrong, adapted right)"].append(record)
        elif was and not now:
            groups["broken (base right, adapted wrong)"].append(record)
        else:
            counts["both right" if now else "both wrong"] += 1
    rows = [[name, len(items)] for name, items in groups.items()]
    rows += [[name, count] for name, count in counts.items()]
    body = table(["test prompts", "count"], rows, [False, True])
    for name, items in groups.items():
        if not items:
            continue
        shown = [
            [r["index"], r["input"], r["truth"], r["predicted"], r["baselines"]["base"]]
            for r in items[:8]
        ]
        body += f"<h3>{name.capitalize()}</h3>" + table(
            ["#", "prompt", "answer", "adapted", "base"], shown, [True] + [False] * 4
        )
    return [Section("answers", "Answers: adapted vs base", body)]


TASK_SECTIONS: dict[type, Callable[[RunFiles], list[Section]]] = {
    Classify: classification,
    Regression: regression,
    CausalLM: answers,
}
"""A text-to-image run has none here: its concept section comes from its summary
(`sections.concept`), as any section a method adds."""


def task_sections(run: RunFiles) -> list[Section]:
    own = getattr(run.task, "report_sections", None)
    if own is not None:
        return list(own(run))
    for kind in type(run.task).__mro__:
        if kind in TASK_SECTIONS:
            return TASK_SECTIONS[kind](run)
    return []
