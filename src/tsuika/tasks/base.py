"""The task contract: what is learned and how it is judged.

A task reads targets from the data (`learn`, `encode`), builds the head the model ends in,
gives the training loss from the model's outputs, turns outputs into additive metric sums
(so validation is one pass, and data-parallel shards can be summed) and sums into metrics,
names the metric that selects the best epoch and its direction, turns outputs into
predictions, and provides its own cheap baseline. The loop, the methods and the summary call
only these; none of them knows what a label is.

Predictions and truth are dicts of numpy arrays keyed by target column, one row per example.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from tsuika.config import Config, HeadConfig, ReadsSettings
from tsuika.data.splits import Examples, Splits
from tsuika.errors import TsuikaError
from tsuika.feed import Feed, gather_outputs, input_feed, run_model
from tsuika.model_kinds import ENCODERS
from tsuika.models.base import AdaptableModel, State
from tsuika.tasks.linear import FeatureSplits

Arrays = dict[str, np.ndarray]


METRIC_TITLES = {"macro_f1": "macro-F1", "rmse": "RMSE", "mae": "MAE", "r2": "R²"}
"""How the results table, the report and `compare` name a metric; a task adds its own."""


class Task(ReadsSettings, ABC):
    name: ClassVar[str] = "task"
    model_kinds: ClassVar[frozenset[str]]
    """The kinds of model this task adapts (`tsuika.model_kinds`): encoders, whose pooled
    features feed a new head (`HeadTask`), or a model that keeps its own pretrained head."""
    selection: ClassVar[str]
    """The validation metric that picks the best epoch and drives early stopping."""
    higher_is_better: ClassVar[bool]
    shown: ClassVar[tuple[str, ...]]
    """Test metrics in the results table, most important first."""
    metric_titles: ClassVar[dict[str, str]] = METRIC_TITLES
    """Display names of metrics whose key is not already how a reader would name them."""

    # -- what the rest of tsuika asks of a task (declared here, never worked out from its name)
    has_classes: ClassVar[bool] = False
    """Targets are classes: the data checks count them, `tsuika rank --limit` draws them
    evenly, `train.balance` weighs them."""
    rankable: ClassVar[bool] = False
    """`tsuika rank` can score candidate models for it (a probe on their frozen features)."""
    plannable: ClassVar[bool] = False
    """`tsuika plan` can search methods for it (trials select on its validation metric)."""
    selection_is_share: ClassVar[bool] = False
    """The selection metric is a share of examples, so `plan` can give it a binomial
    interval."""
    forgetting: ClassVar[str | None] = None
    """How `data.retain` measures what the model forgets (`tsuika.advice.forgetting`):
    `probe` (a linear probe on the encoder's pooled features of a labelled retain set),
    `loss` (the retain texts' loss per token), or None (not measured for this task)."""

    export_forms: ClassVar[tuple[str, ...]] = ()
    """What `tsuika export` writes for a run of this task: `onnx` (one graph from inputs to
    outputs), `hf` (a folder transformers, timm or torch loads); none: `no_export` says why."""
    no_export: ClassVar[str] = "this task's runs are used through tsuika"
    """Why a run has no export (or no other one), with what to do instead."""

    @classmethod
    def recipe(cls) -> tuple[str, str] | None:
        """The method `method: auto` gives this task and why, or None: the recipe chooses
        from the data (`tsuika.methods.recipe`)."""
        return (
            "transfer",
            f"{cls.name}: transfer learning (a new head on frozen features; name a method "
            "to fine-tune)",
        )

    @classmethod
    def metric_title(cls, metric: str) -> str:
        return cls.metric_titles.get(metric, metric)

    new_head: ClassVar[bool] = False
    """Whether the model ends in a new head of this task's (`HeadTask`, which trains at
    `train.lr`) rather than a pretrained one (trained, if at all, like the rest of the
    network)."""

    inference_batch: ClassVar[int] = 128
    """Examples per batch when only predicting (validation, test)."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = list(columns)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Config) -> Task:
        column = config.data.label_column
        return cls(column if isinstance(column, list) else [column])

    @classmethod
    @abstractmethod
    def from_meta(cls, meta: dict[str, Any]) -> Task:
        """Rebuild the task a run was trained with from `to_meta()` (validated by the caller)."""

    @abstractmethod
    def to_meta(self) -> dict[str, Any]:
        """What `from_meta` needs to rebuild this task (labels, statistics), for meta.json."""

    @classmethod
    @abstractmethod
    def meta_problem(cls, meta: dict[str, Any]) -> str | None:
        """What is wrong with a `to_meta()` dict read from a file (it may come from anyone),
        or None."""

    # -- data ------------------------------------------------------------------------------
    def learn(self, pool: Examples) -> None:
        """Read what the targets are from the training pool (label sets, value checks)."""
        return None  # a task with classes reads their names here

    @abstractmethod
    def encode(self, raw: Examples, problems: list[str] | None = None) -> Examples:
        """Raw target strings → numbers. An unusable target is an error, or — with a
        `problems` list (images: skip and count) — its example is left out and named."""

    def fit(self, train: Examples) -> None:
        """Statistics of the training split (e.g. target mean and spread)."""
        return None  # a task without statistics of its targets has none to take

    def checked_splits(self, splits: Splits) -> Splits:
        """The splits as the data checks (duplicates, leakage, sizes) read them: the data the
        user gave, each example once. By default the splits themselves; a task whose splits
        repeat examples or share them by design returns what is left to check."""
        return splits

    def strata(self, examples: Examples) -> list[int] | None:
        """Class of each example for stratified splits and `data.k`; None: no classes."""
        return None

    @abstractmethod
    def targets(self, examples: Examples) -> dict[str, torch.Tensor]:
        """The examples' targets as tensors, by column: what a batch carries to the loss."""

    def truth(self, examples: Examples) -> Arrays:
        return {c: np.asarray(examples.targets[c]) for c in self.columns}

    def units(self, examples: Examples) -> list[float] | None:
        """Loss units of each example (None: one each; tokens for token-level tasks)."""
        return None

    # -- training and validation -----------------------------------------------------------
    def inputs(self, state: State, targets: dict[str, torch.Tensor]) -> State:
        """What the model is given for a batch: its state, to which a task may add what it
        needs computed (a causal LM: the positions whose next token is learned)."""
        return state

    @abstractmethod
    def losses(self, outputs: State, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of every example of the batch, [B]."""

    def loss(self, outputs: State, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss per example of the batch (a scalar): what a training step minimises."""
        return self.losses(outputs, targets).mean()

    def loss_sum(
        self,
        outputs: State,
        targets: dict[str, torch.Tensor],
        loss: torch.Tensor | None = None,
    ) -> float:
        """The batch's summed loss; from its mean `loss` when a training step already has it."""
        n = len(next(iter(targets.values())))
        total = loss.detach() * n if loss is not None else self.losses(outputs, targets).sum()
        return total.item()

    def loss_sums(
        self,
        outputs: State,
        targets: dict[str, torch.Tensor],
        loss: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """`loss` (summed) and, in evaluation (no training `loss` given), `loss_squared`: the
        sum of squared per-example losses, from which `loss_error` gives the standard error of
        the mean loss — how far two epochs' validation losses differ by chance alone."""
        if loss is not None:
            return {"loss": self.loss_sum(outputs, targets, loss)}
        losses = self.losses(outputs, targets).double()
        return {"loss": losses.sum().item(), "loss_squared": (losses**2).sum().item()}

    @staticmethod
    def loss_error(sums: dict[str, float]) -> dict[str, float]:
        """`loss_se`, the standard error of the mean loss, when `loss_squared` was summed."""
        n = sums.get("n", 0.0)
        if "loss_squared" not in sums or n < 2:
            return {}
        mean = sums["loss"] / n
        variance = max(sums["loss_squared"] / n - mean**2, 0.0) * n / (n - 1)
        return {"loss_se": (variance / n) ** 0.5}

    @abstractmethod
    def sums(
        self,
        outputs: State,
        targets: dict[str, torch.Tensor],
        loss: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """Additive statistics of a batch: `summarize` of their totals gives the metrics.
        `loss`, the batch's mean loss when the caller already has it (a training step), is
        used rather than computed again."""

    @abstractmethod
    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Metrics (including `loss` and `selection`) from summed statistics."""

    def handle_imbalance(self, mode: str, train: Examples) -> str | None:
        """`train.balance`: what this task does about rare classes, in one line (None:
        nothing). A task without classes has none to balance: `auto` and `none` do nothing,
        `weights` and `sampler` are refused."""
        if mode in ("weights", "sampler"):
            raise TsuikaError(f"train.balance applies to classification; this task is {self.name}")
        return None

    def evaluate(self, model: nn.Module, feed: Feed) -> dict[str, float]:
        """Metrics of `model` over a whole feed, in one eval-mode pass (none for an empty feed:
        a validation split given back to training)."""
        totals: dict[str, float] = {}
        if len(feed) == 0:
            return totals
        for outputs, batch in run_model(model, feed, self.inference_batch, None, self.inputs):
            for key, value in self.sums(outputs, batch.targets).items():
                totals[key] = totals.get(key, 0.0) + value
        return self.summarize(totals)

    def better(self, a: float, b: float) -> bool:
        """Is selection value `a` strictly better than `b`?"""
        return a > b if self.higher_is_better else a < b

    # -- predictions and test metrics ------------------------------------------------------
    def kept(self, outputs: State, targets: dict[str, torch.Tensor]) -> State:
        """What a gathered pass keeps of a batch's outputs (rows of one shape per split):
        everything, unless the outputs are too large to hold for a whole split."""
        return outputs

    def gather(self, model: nn.Module, feed: Feed) -> State:
        """The kept outputs of `model` over `feed`, rows in the feed's order."""
        return gather_outputs(model, feed, self.inference_batch, keep=self.kept, inputs=self.inputs)

    def predict(self, model: AdaptableModel, inputs: list) -> list:
        """Predictions for raw inputs, as Python values (`decoded`)."""
        if len(inputs) == 0:
            return []
        return self.decoded(self.predictions(self.gather(model, input_feed(model, inputs))))

    def describe_inputs(self, model: AdaptableModel, inputs: list) -> list[str]:
        """`describe` for every one of raw `inputs`."""
        outputs = self.gather(model, input_feed(model, inputs))
        predicted = self.predictions(outputs)
        return [self.describe(predicted, row, outputs) for row in range(len(inputs))]

    @abstractmethod
    def predictions(self, outputs: State) -> Arrays:
        """Gathered outputs → predicted targets per column."""

    @abstractmethod
    def test_metrics(self, truth: Arrays, predicted: Arrays) -> dict[str, float]:
        """Every metric of predictions against the truth (the test split's results)."""

    @abstractmethod
    def per_example(self, truth: Arrays, predicted: Arrays) -> np.ndarray:
        """One value per example whose mean, through `from_mean`, is the selection metric:
        what the paired bootstrap resamples."""

    def selection_statistics(self, truth: Arrays, predicted: Arrays) -> np.ndarray:
        """What the paired bootstrap resamples: per-example values [N] (or [N, M]) whose mean
        over examples, through `from_mean`, is the selection metric."""
        return self.per_example(truth, predicted)

    def from_mean(self, mean: np.ndarray) -> np.ndarray:
        return mean

    @abstractmethod
    def describe(self, predicted: Arrays, row: int, outputs: State | None = None) -> str:
        """One prediction in words, for `tsuika predict`."""

    @abstractmethod
    def decoded(self, predicted: Arrays) -> list:
        """Predictions as Python values: one label / number, or a dict for several columns."""

    # -- baselines and words ---------------------------------------------------------------
    @abstractmethod
    def gain_number(self, gain: float) -> str:
        """A difference in the selection metric as a signed number in `gain_unit`s."""

    baselines: ClassVar[tuple[str, ...]] = ()
    """The baselines this task can be compared with (`tsuika.evaluate.baselines` runs those
    the config asks for), e.g. `base`: the pretrained model as it is."""

    gain_unit: ClassVar[str] = ""
    gain_scale: ClassVar[float] = 1.0
    """A difference in the selection metric × this is in `gain_unit`s (accuracy: 100)."""

    def gain_interval(self, gain: dict[str, float]) -> str:
        """A paired-bootstrap gain and its interval: `+6.0 [+3.7, +8.5]`."""
        numbers = [self.gain_number(gain[key]) for key in ("gain", "low", "high")]
        return f"{numbers[0]} [{numbers[1]}, {numbers[2]}]"

    def confidence(self, outputs: State) -> np.ndarray | None:
        """How sure the model is of each prediction (classify: its top probability), [N];
        None when the task has no such number."""
        return None

    def gain_words(self, gain: float) -> str:
        """A gain in the selection metric (positive: better), in words (`+9.6 accuracy
        points`)."""
        return f"{self.gain_number(gain)} {self.gain_unit}"


class HeadTask(Task):
    """A task that ends an encoder in a new head of its own (classify, regression): what it
    has that a task keeping a pretrained head (a causal LM, text-to-image) lacks — the head
    itself, its closed-form fit, and the baselines a head is judged against."""

    model_kinds: ClassVar[frozenset[str]] = ENCODERS
    new_head: ClassVar[bool] = True
    forgetting: ClassVar[str | None] = "probe"
    export_forms: ClassVar[tuple[str, ...]] = ("onnx", "hf")

    @abstractmethod
    def head(self, width: int, config: HeadConfig) -> nn.Module:
        """The new head: features [B, width] → this task's outputs."""

    def has_closed_form(self, head: nn.Module) -> bool:
        """Can `solve_head` fit this head? (A linear head, and a convex loss.)"""
        return False

    def solve_head(
        self, head: nn.Module, features: torch.Tensor, targets: dict[str, torch.Tensor], seed: int
    ) -> dict[str, Any] | None:
        """Fit a linear `head` on fixed features [N, D] to the optimum of its convex loss
        (regularisation chosen by cross-validation on these examples) and return how it was
        chosen; None when this task or head has no closed form (it then trains by steps)."""
        return None

    # -- baselines -------------------------------------------------------------------------
    baselines: ClassVar[tuple[str, ...]] = (
        "constant",
        "classical",
        "probe",
        "undistilled",
        "scratch",
    )
    """Its constant prediction, a classical model without pretraining, a linear probe on
    frozen features, a distilled student trained on the labels alone, the same architecture
    trained from scratch."""
    linear_model: ClassVar[str] = "a linear model"
    """What `linear_baseline` fits, in words (`logistic regression`)."""

    @abstractmethod
    def constant_baseline(self, train: Examples, n: int) -> tuple[str, Arrays, dict[str, Any]]:
        """The cheapest honest baseline: (name, predictions for n examples, details)."""

    @abstractmethod
    def linear_baseline(
        self, features: FeatureSplits, train: Examples, val: Examples
    ) -> tuple[Arrays, dict[str, Any]]:
        """Predictions on the test features of a linear model fitted on the training features
        (regularisation chosen on validation), and its settings."""
