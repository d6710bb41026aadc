"""Charts as inline SVG, drawn by matplotlib: a report opens from disk with no script, no
network and nothing to load, and prints as it looks. Each function returns one `<svg>`."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display: never open a window, even where one exists

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from tsuika.train.schedule import lr_multiplier

STYLE = {
    "svg.fonttype": "none",  # text stays text: smaller, selectable, the page's own font
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": 100,
    "svg.hashsalt": "tsuika",  # element ids from content, not random: a rebuilt report is identical
}
RUN, BASE, VAL, TRAIN = "#1f6feb", "#8c959f", "#d1242f", "#1f6feb"
WIDTH = 6.4
SCHEDULE_POINTS = 2000
"""Steps the learning-rate chart computes at most: a smooth line at any width a page has."""


def to_svg(figure: plt.Figure) -> str:
    """The figure as an inline `<svg>` element: no XML prologue, DOCTYPE or metadata (they
    carry w3.org and creativecommons addresses, and a report must name no external URL)."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(figure)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    # Inline SVG in HTML needs no namespace declarations; the HTML parser adds them.
    return re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)


def _figure(height: float, columns: int = 1) -> tuple[plt.Figure, np.ndarray]:
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(1, columns, figsize=(WIDTH, height), squeeze=False)
    return figure, axes[0]


def _reach(upper: float, lower: float) -> float:
    """An error bar's length from `lower` up to `upper`; none when the interval misses its
    estimate (matplotlib refuses a negative length): runs compared by a ratio metric such as
    macro-F1, or a summary edited by hand."""
    return max(upper - lower, 0.0)


def learning_curves(history: list[dict], metric: str, best_epoch: int, stopped_early: bool) -> str:
    """Loss and the selection metric per epoch, train and validation; the best epoch (whose
    weights were kept) marked, and where early stopping ended the run."""
    with plt.rc_context(STYLE):
        figure, (loss, score) = _figure(2.6, 2)
        epochs = [r["epoch"] for r in history]
        for axis, key, title in ((loss, "loss", "loss"), (score, metric, metric)):
            for split, colour in (("train", TRAIN), ("val", VAL)):
                values = [r.get(f"{split}_{key}") for r in history]
                if all(v is not None for v in values):
                    label = "train" if split == "train" else "validation"
                    axis.plot(epochs, values, "o-", ms=3, color=colour, label=label)
            axis.axvline(best_epoch, color="#2da44e", ls="--", lw=1, label="best epoch (kept)")
            if stopped_early:
                axis.axvline(epochs[-1], color="#bf8700", ls=":", lw=1, label="early stop")
            axis.set_xlabel("epoch")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.set_title(title)
        score.legend(fontsize=7, loc="best")
        figure.tight_layout()
        return to_svg(figure)


def forgetting(history: list[dict], metric: str, retained: dict) -> str:
    """The target's validation metric and the retain set's score per epoch, side by side;
    the pretrained model's retain score as a line."""
    with plt.rc_context(STYLE):
        figure, (target, retain) = _figure(2.6, 2)
        epochs = [r["epoch"] for r in history]
        target.plot(epochs, [r.get(f"val_{metric}") for r in history], "o-", ms=3, color=VAL)
        target.set_title(f"target: validation {metric}")
        key = f"retain_{retained['metric']}"
        scores = [r.get(key) for r in history]
        retain.plot(epochs, scores, "o-", ms=3, color=TRAIN, label="during training")
        retain.axhline(retained["pretrained"], color=BASE, ls="--", lw=1, label="pretrained")
        retain.set_title(f"retained: {retained['metric']} ({retained['verdict']})")
        retain.legend(fontsize=7, loc="best")
        for axis in (target, retain):
            axis.set_xlabel("epoch")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        figure.tight_layout()
        return to_svg(figure)


def lr_schedule(schedule: dict, steps_run: int) -> str:
    """Each optimizer group's learning rate at every step of the plan; the steps after early
    stopping shaded (planned, never taken)."""
    with plt.rc_context(STYLE):
        figure, (axis,) = _figure(2.4)
        total, warmup = schedule["total_steps"], schedule["warmup_steps"]
        if total > SCHEDULE_POINTS:  # a long run (or an edited total): a sample of its steps
            steps = np.linspace(0, total - 1, SCHEDULE_POINTS).round()
        else:
            steps = np.arange(max(total, 1))
        factors = np.array([lr_multiplier(int(s), total, warmup, schedule["kind"]) for s in steps])
        for name, rate in schedule["rates"].items():
            axis.plot(steps, rate * factors, lw=1.5, label=name)
        rates = [r for r in schedule["rates"].values() if r > 0]
        if rates and max(rates) / min(rates) > 20:  # head and backbone rates decades apart
            axis.set_yscale("log")
        if 0 < steps_run < total:
            axis.axvspan(steps_run, total, color=BASE, alpha=0.15, label="not run (stopped)")
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("learning rate")
        if axis.get_yscale() == "linear":
            axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        if len(schedule["rates"]) <= 12:
            axis.legend(fontsize=7, loc="upper right", ncol=2)
        figure.tight_layout()
        return to_svg(figure)


def versus_baselines(
    names: Sequence[str],
    scores: Sequence[float],
    gains: Sequence[dict],
    metric: str,
    run_name: str,
    run_score: float,
    gain_scale: float,
    gain_unit: str,
) -> str:
    """Left: the test metric of the run and of every baseline. Right: the gain of the run over
    each baseline with its 95% paired bootstrap interval (right of zero: the run is better)."""
    with plt.rc_context(STYLE):
        rows = len(names) + 1
        figure, (left, right) = _figure(0.42 * rows + 1.1, 2)
        y = np.arange(rows)[::-1]
        values = [run_score, *scores]
        left.barh(y, values, color=[RUN] + [BASE] * len(names), height=0.6)
        for row, value in zip(y, values, strict=True):
            left.text(value, row, f" {value:.3f}", va="center", fontsize=8)
        left.set_yticks(y, [run_name, *names])
        left.set_title(f"test {metric}", fontsize=9)
        left.margins(x=0.22)
        gain = [g["gain"] * gain_scale for g in gains]
        below = [_reach(g["gain"], g["low"]) * gain_scale for g in gains]
        above = [_reach(g["high"], g["gain"]) * gain_scale for g in gains]
        colours = [RUN if g["low"] > 0 else (VAL if g["gain"] <= 0 else "#bf8700") for g in gains]
        for row, value, low, high, colour in zip(y[1:], gain, below, above, colours, strict=True):
            right.errorbar([value], [row], xerr=[[low], [high]], fmt="o", color=colour, capsize=3)
        right.axvline(0, color="black", lw=0.8)
        right.set_yticks(y, [""] * rows)
        right.set_ylim(left.get_ylim())
        right.set_title(f"gain of {run_name} over each ({gain_unit}, 95% CI)", fontsize=9)
        figure.tight_layout()
        return to_svg(figure)


def confusion(matrix: np.ndarray, labels: Sequence[str], title: str) -> str:
    """Counts of true (rows) × predicted (columns) classes; shading by row share, so a
    small class's errors show as clearly as a large one's."""
    with plt.rc_context({**STYLE, "axes.grid": False}):
        size = min(7.0, 1.6 + 0.35 * len(labels))
        figure, axis = plt.subplots(figsize=(size, size))
        shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
        axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        ticks = np.arange(len(labels))
        axis.set_xticks(ticks, labels, rotation=45, ha="right")
        axis.set_yticks(ticks, labels)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(title)
        if len(labels) <= 20:
            for (row, column), count in np.ndenumerate(matrix):
                colour = "white" if shares[row, column] > 0.6 else "black"
                axis.text(
                    column, row, int(count), ha="center", va="center", fontsize=7, color=colour
                )
        figure.tight_layout()
        return to_svg(figure)


def predicted_vs_true(truth: np.ndarray, predicted: np.ndarray, column: str) -> str:
    """Regression: each test example's prediction against its target; the diagonal is exact."""
    with plt.rc_context(STYLE):
        figure, (axis,) = _figure(3.2)
        axis.scatter(truth, predicted, s=8, alpha=0.6, color=RUN)
        low = float(min(truth.min(), predicted.min()))
        high = float(max(truth.max(), predicted.max()))
        axis.plot([low, high], [low, high], color="black", lw=0.8, label="exact")
        axis.set_xlabel(f"true {column}")
        axis.set_ylabel(f"predicted {column}")
        axis.legend(fontsize=7)
        figure.tight_layout()
        return to_svg(figure)


def runs_compared(
    names: Sequence[str],
    scores: Sequence[float],
    intervals: Sequence[tuple[float, float]],
    seconds: Sequence[float],
    metric: str,
) -> str:
    """Left: each run's test metric with its 95% bootstrap interval. Right: what each run
    cost (seconds) against what it scored."""
    with plt.rc_context(STYLE):
        figure, (left, right) = _figure(0.45 * len(names) + 1.2, 2)
        y = np.arange(len(names))[::-1]
        low = [_reach(s, i[0]) for s, i in zip(scores, intervals, strict=True)]
        high = [_reach(i[1], s) for s, i in zip(scores, intervals, strict=True)]
        left.errorbar(scores, y, xerr=[low, high], fmt="o", color=RUN, capsize=3)
        left.set_yticks(y, names)
        left.set_xlabel(f"test {metric} (95% CI)")
        right.scatter(seconds, scores, color=RUN)
        for name, x, value in zip(names, seconds, scores, strict=True):
            right.annotate(name, (x, value), fontsize=7, xytext=(3, 3), textcoords="offset points")
        right.set_xlabel("seconds (whole run)")
        right.set_ylabel(f"test {metric}")
        figure.tight_layout()
        return to_svg(figure)


def curves_compared(histories: dict[str, list[dict]], metric: str) -> str:
    """Validation metric per epoch of several runs."""
    with plt.rc_context(STYLE):
        figure, (axis,) = _figure(2.6)
        for name, history in histories.items():
            epochs = [r["epoch"] for r in history]
            axis.plot(epochs, [r.get(f"val_{metric}") for r in history], "o-", ms=3, label=name)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(f"validation {metric}")
        axis.legend(fontsize=7)
        figure.tight_layout()
        return to_svg(figure)
