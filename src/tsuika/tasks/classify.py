"""Classification: one label column (`classify`) or several (`multi-task`), one head each on a
shared body. Multi-task learning (Caruana 1997): the losses are summed with per-column
weights, metrics are reported per column, and the best epoch is chosen on their mean.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from torch import nn

from tsuika.config import Config, HeadConfig
from tsuika.data.splits import Examples, check_classes, encode_labels, label_names
from tsuika.errors import TsuikaError
from tsuika.models.base import State
from tsuika.models.heads import Head, MultiHead, linear_layers, set_linear
from tsuika.tasks.base import Arrays, HeadTask
from tsuika.tasks.linear import FeatureSplits, fit_on_validation, solve_logistic

SELECTIONS = ("accuracy", "macro_f1")
IMBALANCED = 3.0
"""From this ratio of the largest to the smallest training class on (the ratio at which
`tsuika check` warns), `train.balance: auto` selects on macro-F1 and weighs the classes."""
INVERSE_REGULARISATION = (0.01, 0.1, 1.0, 10.0, 100.0)
"""Logistic regression's C, most regularised first: four decades cover TF-IDF (large C) and
standardised dense features (small C) alike."""


class Classify(HeadTask):
    name = "classify"
    selection = "accuracy"
    higher_is_better = True
    shown = ("accuracy", "macro_f1")
    has_classes = True
    sections = ("multitask",)  # multitask.weights, when there are several columns
    rankable = True
    plannable = True
    selection_is_share = True

    @classmethod
    def recipe(cls) -> tuple[str, str] | None:
        return None  # by the data: how many examples per class, text or images

    def __init__(
        self,
        columns: list[str],
        labels: dict[str, list[str]] | None = None,
        weights: dict[str, float] | None = None,
        selection: str = "accuracy",
    ) -> None:
        super().__init__(columns)
        self.labels = labels or {}
        """Column → its class names; index i of a column's logits is class `labels[col][i]`."""
        unknown = sorted(set(weights or {}) - set(columns))
        if unknown:
            raise TsuikaError(
                f"multitask.weights names `{unknown[0]}`, which is not a label column "
                f"({', '.join(columns)})"
            )
        self.weights = {c: float((weights or {}).get(c, 1.0)) for c in columns}
        self.class_weights: dict[str, torch.Tensor] = {}
        """`train.balance: weights`: column → the loss weight of each class."""
        self.selection = selection
        """`accuracy`, or `macro_f1` when the classes are imbalanced (`handle_imbalance`)."""
        self.imbalance = "none"
        """How a head solved in closed form treats rare classes: `none` or `weights`."""

    @classmethod
    def from_config(cls, config: Config) -> Classify:
        column = config.data.label_column
        columns = column if isinstance(column, list) else [column]
        if not columns or len(set(columns)) != len(columns):
            raise TsuikaError("data.label_column: give one column, or several different ones")
        return cls(columns, weights=config.multitask.weights)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Classify:
        labels = meta["labels"]
        return cls(list(labels), labels, meta.get("weights"), meta.get("selection", "accuracy"))

    def to_meta(self) -> dict[str, Any]:
        meta = {"name": self.name, "labels": self.labels, "weights": self.weights}
        return meta | {"selection": self.selection}

    @classmethod
    def meta_problem(cls, meta: dict[str, Any]) -> str | None:
        labels = meta.get("labels")
        if not isinstance(labels, dict) or not labels:
            return "`labels` is not an object of label columns"
        for column, names in labels.items():
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                return f"`labels.{column}` is not a list of strings"
            if len(names) < 2 or len(set(names)) != len(names):
                return f"`labels.{column}` needs at least two different labels"
        weights = meta.get("weights", {})
        if not isinstance(weights, dict) or not all(
            isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w)
            for w in weights.values()
        ):
            return "`weights` is not an object of finite numbers"
        if set(weights) - set(labels):
            return "`weights` names a column without labels"
        if meta.get("selection", "accuracy") not in SELECTIONS:
            return f"`selection` is not one of {', '.join(SELECTIONS)}"
        return None

    @property
    def sizes(self) -> list[int]:
        return [len(self.labels[c]) for c in self.columns]

    # -- data ------------------------------------------------------------------------------
    def learn(self, pool: Examples) -> None:
        for column in self.columns:
            names = label_names(pool.targets[column])
            check_classes(names, f"{pool.source} (column `{column}`)")
            self.labels[column] = names

    def encode(self, raw: Examples, problems: list[str] | None = None) -> Examples:
        if problems is not None:  # images: an example of an unknown class is skipped
            raw = raw.subset(self._known(raw, problems))
        lines = raw.lines or [0] * len(raw)
        targets = {
            c: encode_labels(raw.targets[c], self.labels[c], raw.source, lines)
            for c in self.columns
        }
        return Examples(raw.inputs, targets, raw.source, raw.lines, raw.names)

    def _known(self, raw: Examples, problems: list[str]) -> list[int]:
        keep = list(range(len(raw)))
        for column in self.columns:
            known = set(self.labels[column])
            values = raw.targets[column]
            for label in sorted({values[i] for i in keep} - known):
                count = sum(1 for i in keep if values[i] == label)
                problems.append(
                    f"{raw.source}: class `{label}` does not occur in training "
                    f"({count} images left out)"
                )
            keep = [i for i in keep if values[i] in known]
        return keep

    def fit(self, train: Examples) -> None:
        for column in self.columns:
            present = label_names([self.labels[column][i] for i in train.targets[column]])
            check_classes(present, f"{train.source} (training split, column `{column}`)")

    def strata(self, examples: Examples) -> list[int]:
        return examples.targets[self.columns[0]]

    def targets(self, examples: Examples) -> dict[str, torch.Tensor]:
        return {c: torch.tensor(examples.targets[c], dtype=torch.long) for c in self.columns}

    # -- model -----------------------------------------------------------------------------
    def head(self, width: int, config: HeadConfig) -> nn.Module:
        if len(self.columns) == 1:
            return Head(width, self.sizes[0], config.type, config.hidden, config.dropout)
        return MultiHead(width, self.sizes, config)

    def split_logits(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """[B, Σ classes] → column → [B, classes of that column]."""
        return dict(zip(self.columns, logits.split(self.sizes, dim=-1), strict=True))

    # -- training and validation -----------------------------------------------------------
    def losses(self, outputs: State, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-example weighted sum of the columns' cross-entropies, [B]."""
        total = 0
        for column, logits in self.split_logits(outputs["logits"].float()).items():
            weight = self.class_weights.get(column)
            weight = weight.to(logits.device) if weight is not None else None
            loss = nn.functional.cross_entropy(
                logits, targets[column], weight=weight, reduction="none"
            )
            total = total + self.weights[column] * loss
        return total

    def balance(self, examples: Examples) -> None:
        """Each class weighs n / (classes × its count) in the loss (scikit-learn's
        `class_weight="balanced"`): every class contributes equally to a training epoch."""
        for column, size in zip(self.columns, self.sizes, strict=True):
            counts = torch.bincount(torch.tensor(examples.targets[column]), minlength=size)
            counts = counts.float()
            self.class_weights[column] = counts.sum() / (size * counts.clamp(min=1))

    def draw_weights(self, targets: dict[str, torch.Tensor]) -> list[float]:
        """Per-example probability weights for `train.balance: sampler`: 1 / the count of
        its class in the first label column, so every class is drawn equally often."""
        labels = targets[self.columns[0]]
        counts = torch.bincount(labels).float()
        return (1.0 / counts[labels]).tolist()

    def sums(
        self,
        outputs: State,
        targets: dict[str, torch.Tensor],
        loss: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """The summed loss and, per column and class, true positives, predictions and true
        examples: accuracy and macro-F1 both follow from these additive counts."""
        with torch.no_grad():
            n = len(targets[self.columns[0]])
            sums = {"n": float(n), **self.loss_sums(outputs, targets, loss)}
            for column, logits in self.split_logits(outputs["logits"]).items():
                size, truth = logits.shape[-1], targets[column].to(logits.device)
                guess = logits.argmax(-1)
                hits = torch.bincount(truth[guess == truth], minlength=size)
                counts = {
                    "hit": hits,
                    "guessed": torch.bincount(guess, minlength=size),
                    "true": torch.bincount(truth, minlength=size),
                }
                sums[f"correct/{column}"] = float(hits.sum().item())
                for kind, values in counts.items():
                    for index, value in enumerate(values.tolist()):
                        sums[f"{kind}/{column}/{index}"] = float(value)
        return sums

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("n", 0.0), 1.0)
        metrics = {"loss": sums.get("loss", 0.0) / n}
        per_column = {c: sums.get(f"correct/{c}", 0.0) / n for c in self.columns}
        f1 = {c: self._macro_f1(sums, c) for c in self.columns}
        metrics["accuracy"] = float(np.mean(list(per_column.values())))
        metrics["macro_f1"] = float(np.mean(list(f1.values())))
        metrics |= self.loss_error(sums)
        if len(self.columns) > 1:
            metrics.update({f"accuracy/{c}": value for c, value in per_column.items()})
            metrics.update({f"macro_f1/{c}": value for c, value in f1.items()})
        return metrics

    def _macro_f1(self, sums: dict[str, float], column: str) -> float:
        """Macro-F1 from summed counts, over the classes that occur in the truth or the
        predictions (scikit-learn's `f1_score(average="macro")`)."""
        scores = []
        for index in range(len(self.labels[column])):
            hits = sums.get(f"hit/{column}/{index}", 0.0)
            support = sums.get(f"guessed/{column}/{index}", 0.0)
            support += sums.get(f"true/{column}/{index}", 0.0)
            if support > 0:
                scores.append(2 * hits / support)
        return float(np.mean(scores)) if scores else 0.0

    # -- imbalance -------------------------------------------------------------------------
    def imbalance_ratio(self, train: Examples) -> float:
        """Largest over smallest training class, the worst column."""
        ratios = []
        for column, size in zip(self.columns, self.sizes, strict=True):
            counts = np.bincount(train.targets[column], minlength=size)
            ratios.append(counts.max() / max(counts.min(), 1))
        return float(max(ratios))

    def handle_imbalance(self, mode: str, train: Examples) -> str | None:
        """`train.balance`: `auto` (the default) leaves balanced data as it is; from
        `IMBALANCED` (largest class over smallest) on, the best epoch and the head's
        regularisation are chosen on macro-F1 instead of accuracy (a model that predicts
        only the majority class scores high accuracy and a low macro-F1) and the classes
        weigh equally in the loss. `weights` / `sampler` choose the remedy themselves (and
        select on macro-F1 too); `none` changes nothing. Returns what was done, in one line."""
        ratio = self.imbalance_ratio(train)
        imbalanced = ratio >= IMBALANCED
        if mode == "none" or (mode == "auto" and not imbalanced):
            return None
        self.selection = "macro_f1"
        self.imbalance = "weights"  # a sampler's epochs weigh the classes equally too
        if mode in ("auto", "weights"):
            self.balance(train)
        counts = self.class_counts(train)
        how = {
            "auto": "classes weighed equally in the loss (n / (classes × count))",
            "weights": "classes weighed equally in the loss (train.balance: weights)",
            "sampler": "every class drawn equally often (train.balance: sampler)",
        }[mode]
        return (
            f"imbalanced classes ({counts}; {ratio:.1f}:1): {how}, the best epoch and the "
            "head chosen on macro-F1 (train.balance=none turns this off)"
        )

    def class_counts(self, train: Examples) -> str:
        """`positive 385, negative 161, neutral 54` for the first label column."""
        column = self.columns[0]
        counts = Counter(train.targets[column])
        names = self.labels[column]
        return ", ".join(f"{names[i]} {n}" for i, n in counts.most_common())

    # -- predictions -----------------------------------------------------------------------
    def probabilities(self, outputs: State) -> Arrays:
        return {
            c: logits.float().softmax(-1).numpy()
            for c, logits in self.split_logits(outputs["logits"]).items()
        }

    def predictions(self, outputs: State) -> Arrays:
        return {c: p.argmax(-1) for c, p in self.probabilities(outputs).items()}

    def test_metrics(self, truth: Arrays, predicted: Arrays) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for c in self.columns:
            metrics[f"accuracy/{c}"] = float((truth[c] == predicted[c]).mean())
            metrics[f"macro_f1/{c}"] = float(
                f1_score(truth[c], predicted[c], average="macro", zero_division=0)
            )
        mean = {m: float(np.mean([metrics[f"{m}/{c}"] for c in self.columns])) for m in self.shown}
        return mean if len(self.columns) == 1 else {**mean, **metrics}

    def per_example(self, truth: Arrays, predicted: Arrays) -> np.ndarray:
        """Fraction of columns right per example: its mean is the mean accuracy."""
        return np.mean([truth[c] == predicted[c] for c in self.columns], axis=0).astype(float)

    def selection_statistics(self, truth: Arrays, predicted: Arrays) -> np.ndarray:
        """Accuracy: `per_example`. Macro-F1: per example and class, [N, 3 × classes] of
        (hit, guessed, true) indicators, whose means give every class's F1 = 2·hit /
        (guessed + true) — a ratio of means, so the bootstrap resamples examples for it too."""
        if self.selection != "macro_f1":
            return self.per_example(truth, predicted)
        blocks = []
        for column, size in zip(self.columns, self.sizes, strict=True):
            classes = np.arange(size)
            true = truth[column][:, None] == classes
            guessed = predicted[column][:, None] == classes
            blocks += [true & guessed, guessed, true]
        return np.concatenate(blocks, axis=1).astype(float)

    def from_mean(self, mean: np.ndarray) -> np.ndarray:
        """Means of `selection_statistics` ([..., M]) → the selection metric ([...])."""
        if self.selection != "macro_f1":
            return mean
        scores, start = [], 0
        for size in self.sizes:
            hit, guessed, true = (
                mean[..., start + i * size : start + (i + 1) * size] for i in range(3)
            )
            start += 3 * size
            support = guessed + true
            f1 = np.where(support > 0, 2 * hit / np.where(support > 0, support, 1), 0.0)
            present = (support > 0).sum(-1)
            scores.append(f1.sum(-1) / np.maximum(present, 1))
        return np.mean(scores, axis=0)

    def decoded(self, predicted: Arrays) -> list:
        n = len(predicted[self.columns[0]])
        rows = [{c: self.labels[c][int(predicted[c][i])] for c in self.columns} for i in range(n)]
        return [row[self.columns[0]] for row in rows] if len(self.columns) == 1 else rows

    def describe(self, predicted: Arrays, row: int, outputs: State | None = None) -> str:
        if len(self.columns) == 1 and outputs is not None:
            column = self.columns[0]
            probs = self.probabilities(outputs)[column][row]
            best = int(probs.argmax())
            return f"{self.labels[column][best]}\t{probs[best]:.3f}"
        return "\t".join(f"{c}={self.labels[c][int(predicted[c][row])]}" for c in self.columns)

    # -- baselines and words ---------------------------------------------------------------
    def constant_baseline(self, train: Examples, n: int) -> tuple[str, Arrays, dict[str, Any]]:
        """Always the most frequent training class of each column (ties: the lowest index)."""
        predicted, chosen = {}, {}
        for column in self.columns:
            counts = Counter(train.targets[column])
            label = max(sorted(counts), key=lambda k: counts[k])
            predicted[column] = np.full(n, label)
            chosen[column] = self.labels[column][label]
        details = {"label": chosen[self.columns[0]]} if len(self.columns) == 1 else chosen
        return "majority", predicted, details

    gain_scale = 100.0
    linear_model = "logistic regression"

    @property
    def gain_unit(self) -> str:  # type: ignore[override]
        return "macro-F1 points" if self.selection == "macro_f1" else "accuracy points"

    def linear_baseline(
        self, features: FeatureSplits, train: Examples, val: Examples
    ) -> tuple[Arrays, dict[str, Any]]:
        """One L2 logistic regression per label column; C chosen on validation by the
        selection metric, with the run's remedy for rare classes (a baseline that ignores
        them would only be beaten on them)."""
        x_train, x_val, x_test = features
        weighting = "balanced" if self.imbalance == "weights" else None
        predicted, strengths = {}, {}
        for column in self.columns:
            model, strengths[column] = fit_on_validation(
                lambda c: LogisticRegression(C=c, max_iter=500, class_weight=weighting),
                INVERSE_REGULARISATION,
                x_train,
                np.asarray(train.targets[column]),
                x_val,
                np.asarray(val.targets[column]),
                self._score,
            )
            predicted[column] = model.predict(x_test)
        details: dict[str, Any] = {
            "C": strengths[self.columns[0]] if len(self.columns) == 1 else strengths
        }
        if weighting:
            details["class_weight"] = weighting
        return predicted, details

    def _score(self, truth: np.ndarray, predicted: np.ndarray) -> float:
        """The selection metric of one column's predictions."""
        if self.selection == "macro_f1":
            return float(f1_score(truth, predicted, average="macro", zero_division=0))
        return float((truth == predicted).mean())

    def has_closed_form(self, head: nn.Module) -> bool:
        return linear_layers(head) is not None

    def solve_head(
        self, head: nn.Module, features: torch.Tensor, targets: dict[str, torch.Tensor], seed: int
    ) -> dict[str, Any] | None:
        """Each column's logistic regression solved to its optimum (`solve_logistic`), C by
        cross-validation on the selection metric, the imbalance remedy applied."""
        layers = linear_layers(head)
        if not self.has_closed_form(head) or layers is None:
            return None
        x = features.float().cpu().numpy()
        details = {}
        for column, layer, size in zip(self.columns, layers, self.sizes, strict=True):
            y = targets[column].cpu().numpy()
            solved = solve_logistic(x, y, size, self.selection, self.imbalance, seed)
            set_linear(layer, solved.weight, solved.bias)
            details[column] = solved.details
        return details[self.columns[0]] if len(self.columns) == 1 else details

    def confidence(self, outputs: State) -> np.ndarray | None:
        if len(self.columns) != 1:
            return None
        return self.probabilities(outputs)[self.columns[0]].max(-1)

    def gain_number(self, gain: float) -> str:
        return f"{self.gain_scale * gain:+.1f}"


class MultiTask(Classify):
    """`classify` with several label columns, named for what it is."""

    name = "multi-task"
    selection_is_share = False  # the mean of several columns' accuracies

    @classmethod
    def recipe(cls) -> tuple[str, str] | None:
        # Transfer, as for any task: the recipe's schedules were measured on one column.
        return super(Classify, cls).recipe()

    @classmethod
    def from_config(cls, config: Config) -> MultiTask:
        task = super().from_config(config)
        if len(task.columns) < 2:
            raise TsuikaError(
                "task: multi-task needs several label columns, e.g. "
                "data.label_column=[topic, sentiment]"
            )
        return task
