"""Regression: predict one number per example.

The head predicts the target standardised by the training split's mean and standard
deviation (so one learning rate suits targets in any unit); losses are MSE or Huber on that
scale, and every metric (RMSE, MAE, R²) is in the target's own unit. The cheap baseline
predicts the training mean; the best epoch is the one with the lowest validation RMSE.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import Ridge
from torch import nn

from tsuika.config import Config, HeadConfig
from tsuika.data.splits import Examples
from tsuika.errors import TsuikaError
from tsuika.models.base import State
from tsuika.models.heads import Head, linear_layers, set_linear
from tsuika.tasks.base import Arrays, HeadTask
from tsuika.tasks.linear import FeatureSplits, fit_on_validation, solve_ridge

RIDGE_PENALTIES = (1000.0, 100.0, 10.0, 1.0, 0.1)
"""Ridge's alpha, most regularised first."""


class Regression(HeadTask):
    name = "regression"
    selection = "rmse"
    higher_is_better = False
    shown = ("rmse", "mae", "r2")
    sections = ("regression",)
    rankable = True
    plannable = True

    def __init__(
        self,
        column: str,
        loss: str = "mse",
        huber_delta: float = 1.0,
        mean: float = 0.0,
        std: float = 1.0,
    ) -> None:
        super().__init__([column])
        self.column = column
        self.loss_name = loss
        self.huber_delta = huber_delta
        self.mean, self.std = mean, std

    @classmethod
    def from_config(cls, config: Config) -> Regression:
        column = config.data.label_column
        if isinstance(column, list):
            if len(column) != 1:
                raise TsuikaError("task: regression predicts one numeric column; name one")
            column = column[0]
        return cls(column, config.regression.loss, config.regression.huber_delta)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Regression:
        return cls(meta["column"], meta["loss"], meta["huber_delta"], meta["mean"], meta["std"])

    def to_meta(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "column": self.column,
            "loss": self.loss_name,
            "huber_delta": self.huber_delta,
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def meta_problem(cls, meta: dict[str, Any]) -> str | None:
        if not isinstance(meta.get("column"), str):
            return "`column` is not a column name"
        if meta.get("loss") not in ("mse", "huber"):
            return "`loss` is not mse or huber"
        for key in ("huber_delta", "mean", "std"):
            value = meta.get(key)
            if not isinstance(value, int | float) or isinstance(value, bool):
                return f"`{key}` is not a number"
            if not math.isfinite(value):
                return f"`{key}` is not finite"
        if meta["std"] <= 0 or meta["huber_delta"] <= 0:
            return "`std` and `huber_delta` must be positive"
        return None

    # -- data ------------------------------------------------------------------------------
    def encode(self, raw: Examples, problems: list[str] | None = None) -> Examples:
        values = []
        for row, text in enumerate(raw.targets[self.column]):
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                where = f"line {raw.lines[row]}" if raw.lines else f"row {row + 1}"
                raise TsuikaError(
                    f"{raw.source} {where}: `{text}` in column `{self.column}` is not a finite "
                    "number (task: regression); fix the value or remove the row"
                )
            values.append(value)
        return Examples(raw.inputs, {self.column: values}, raw.source, raw.lines, raw.names)

    def fit(self, train: Examples) -> None:
        values = np.asarray(train.targets[self.column], dtype=np.float64)
        self.mean = float(values.mean())
        spread = float(values.std())
        if spread == 0:
            raise TsuikaError(
                f"{train.source}: every training target in `{self.column}` is {self.mean:g}; "
                "there is nothing to learn"
            )
        self.std = spread

    def targets(self, examples: Examples) -> dict[str, torch.Tensor]:
        return {self.column: torch.tensor(examples.targets[self.column], dtype=torch.float32)}

    # -- model -----------------------------------------------------------------------------
    def head(self, width: int, config: HeadConfig) -> nn.Module:
        return Head(width, 1, config.type, config.hidden, config.dropout, key="prediction")

    def value(self, outputs: State) -> torch.Tensor:
        """Predictions [B] in the target's unit."""
        return outputs["prediction"].float().squeeze(-1) * self.std + self.mean

    # -- training and validation -----------------------------------------------------------
    def losses(self, outputs: State, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        scaled = outputs["prediction"].float().squeeze(-1)
        wanted = (targets[self.column].float() - self.mean) / self.std
        if self.loss_name == "huber":
            return nn.functional.huber_loss(
                scaled, wanted, delta=self.huber_delta, reduction="none"
            )
        return nn.functional.mse_loss(scaled, wanted, reduction="none")

    def sums(
        self,
        outputs: State,
        targets: dict[str, torch.Tensor],
        loss: torch.Tensor | None = None,
    ) -> dict[str, float]:
        with torch.no_grad():
            truth = targets[self.column].double()
            error = self.value(outputs).double() - truth
            return {
                "n": float(len(truth)),
                **self.loss_sums(outputs, targets, loss),
                "squared": (error**2).sum().item(),
                "absolute": error.abs().sum().item(),
                "y": truth.sum().item(),
                "yy": (truth**2).sum().item(),
            }

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("n", 0.0), 1.0)
        spread = sums.get("yy", 0.0) - sums.get("y", 0.0) ** 2 / n
        return {
            "loss": sums.get("loss", 0.0) / n,
            "rmse": math.sqrt(sums.get("squared", 0.0) / n),
            "mae": sums.get("absolute", 0.0) / n,
            "r2": 1 - sums.get("squared", 0.0) / spread if spread > 0 else 0.0,
        } | self.loss_error(sums)

    # -- predictions -----------------------------------------------------------------------
    def predictions(self, outputs: State) -> Arrays:
        return {self.column: self.value(outputs).numpy().astype(np.float64)}

    def test_metrics(self, truth: Arrays, predicted: Arrays) -> dict[str, float]:
        y, p = np.asarray(truth[self.column], float), np.asarray(predicted[self.column], float)
        spread = float(((y - y.mean()) ** 2).sum())
        return {
            "rmse": float(np.sqrt(((p - y) ** 2).mean())),
            "mae": float(np.abs(p - y).mean()),
            "r2": float(1 - ((p - y) ** 2).sum() / spread) if spread > 0 else 0.0,
        }

    def per_example(self, truth: Arrays, predicted: Arrays) -> np.ndarray:
        """Squared errors: the square root of their mean is the RMSE."""
        y, p = np.asarray(truth[self.column], float), np.asarray(predicted[self.column], float)
        return (p - y) ** 2

    def from_mean(self, mean: np.ndarray) -> np.ndarray:
        return np.sqrt(mean)

    def decoded(self, predicted: Arrays) -> list:
        return [float(v) for v in predicted[self.column]]

    def describe(self, predicted: Arrays, row: int, outputs: State | None = None) -> str:
        return f"{predicted[self.column][row]:.6g}"

    # -- baselines and words ---------------------------------------------------------------
    def constant_baseline(self, train: Examples, n: int) -> tuple[str, Arrays, dict[str, Any]]:
        mean = float(np.mean(train.targets[self.column]))
        return "mean", {self.column: np.full(n, mean)}, {"value": mean}

    gain_unit = "RMSE (positive: lower error)"
    linear_model = "ridge regression"

    def has_closed_form(self, head: nn.Module) -> bool:
        return linear_layers(head) is not None and self.loss_name == "mse"

    def solve_head(
        self, head: nn.Module, features: torch.Tensor, targets: dict[str, torch.Tensor], seed: int
    ) -> dict[str, Any] | None:
        """Ridge regression to the standardised target (the MSE loss's convex optimum plus
        an L2 penalty chosen by leave-one-out error); the Huber loss trains by steps."""
        layers = linear_layers(head)
        if not self.has_closed_form(head) or layers is None:
            return None
        wanted = (targets[self.column].double().cpu().numpy() - self.mean) / self.std
        solved = solve_ridge(features.float().cpu().numpy(), wanted)
        set_linear(layers[0], solved.weight, solved.bias)
        return solved.details

    def linear_baseline(
        self, features: FeatureSplits, train: Examples, val: Examples
    ) -> tuple[Arrays, dict[str, Any]]:
        """Ridge regression; its penalty chosen on validation RMSE."""
        x_train, x_val, x_test = features
        model, alpha = fit_on_validation(
            lambda a: Ridge(alpha=a),
            RIDGE_PENALTIES,
            x_train,
            np.asarray(train.targets[self.column], float),
            x_val,
            np.asarray(val.targets[self.column], float),
            lambda y, p: -float(np.sqrt(((y - p) ** 2).mean())),
        )
        return {self.column: model.predict(x_test).astype(np.float64)}, {"alpha": alpha}

    def gain_number(self, gain: float) -> str:
        return f"{gain:+.3g}"
