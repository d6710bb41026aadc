"""The baselines a run is compared with. By default they are cheap, a few percent of the run:
the task's constant prediction (majority class, training mean); a classical model without
pretraining (TF-IDF or pixels + a linear model), which is how practitioners check that a
pretrained network is worth its cost; and, when the method changes the pretrained weights, a
linear probe on the frozen model's features, taken from the run's own cache before training.
The same architecture trained from scratch is available (`baselines.scratch`) with a budget
matched to the adapted run's compute."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tsuika.config import Config, build_config
from tsuika.data.splits import Splits
from tsuika.evaluate.budget import adapted_flops, matched_epochs, stage_flops
from tsuika.evaluate.classical import classical_features
from tsuika.feed import Pretrained
from tsuika.methods import Finetune
from tsuika.methods.base import Method
from tsuika.models.base import AdaptableModel, State
from tsuika.tasks import model_kind_for
from tsuika.tasks.base import Arrays, Task
from tsuika.tasks.linear import FeatureSplits, in_training_span, standardised
from tsuika.train.distributed import training_device
from tsuika.train.hooks import Hook
from tsuika.train.phase import PhaseResult, run_phase, seed_everything
from tsuika.train.progress import Progress


@dataclass
class Baseline:
    name: str
    """Key in the summary: `majority`/`mean`, `classical`, `probe`, `scratch`."""
    title: str
    """What it is, in words, for tables and verdicts."""
    predicted: Arrays
    """Its predictions on the test split."""
    seconds: float
    """What it cost: its own fit and prediction, and its share of the pretrained pass taken
    before training (the probe's features, the base model's outputs)."""
    pretrained: bool
    """Whether it uses the pretrained weights (the probe) or not."""
    details: dict[str, Any] = field(default_factory=dict)


def wanted_baselines(
    config: Config, task: Task, method: Method, model: AdaptableModel
) -> list[str]:
    """The baselines to run, in the task's order. The probe's `auto` means: when training
    touches more than the head, or the head trains by steps (a linear head solved in closed
    form on the frozen features is the probe itself; one trained by steps may fall short of
    it, and the verdict can then say so)."""
    settings = config.baselines
    probe = settings.probe
    if probe == "auto":
        solved = config.head.fit == "convex" and config.head.type == "linear"
        probe = not head_only(method, model) or not solved or config.data.augment.active
    chosen = {
        "constant": settings.majority,
        "classical": settings.classical,
        "probe": probe,
        "scratch": settings.scratch,
        "undistilled": "undistilled" in method.extra_baselines(),
        "base": settings.base,
    }
    return [name for name in task.baselines if chosen.get(name)]


def head_only(method: Method, model: AdaptableModel) -> bool:
    """Whether the method trains nothing but the new head."""
    head = f"stages.{model.num_stages - 1}."
    return all(name.startswith(head) for name in method.trainable_parameters(model))


class BeforeTraining:
    """A `BeforeFit` hook: what the pretrained model gives before any training, from the run's
    own feeds (so the frozen prefix's cached activations are reused, never recomputed) —
    pooled features on every split for a linear probe (`features`), and the task's outputs
    on validation and test for the base-model baseline (`outputs`)."""

    def __init__(self, task: Task, features: bool, outputs: bool) -> None:
        self.task = task
        self.want_features, self.want_outputs = features, outputs
        self.features: FeatureSplits | None = None
        self.outputs: State | None = None
        self.validation: dict[str, float] = {}
        self.seconds = 0.0

    def __call__(self, model: AdaptableModel, pretrained: Pretrained) -> None:
        started = time.perf_counter()
        if self.want_features:
            self.features = tuple(  # type: ignore[assignment]
                pretrained.features(split).numpy() for split in ("train", "val", "test")
            )
        if self.want_outputs:
            self.validation = self.task.evaluate(model, pretrained.feed("val"))
            self.outputs = self.task.gather(model, pretrained.feed("test"))
        self.seconds = time.perf_counter() - started


@dataclass
class AdaptedRun:
    """What the adapted run did, for a from-scratch budget matched to it."""

    method: Method
    model: AdaptableModel
    phase: PhaseResult


@dataclass
class BaselineRun:
    """Everything a baseline may need of the run it is compared with: its settings and data,
    what the pretrained model gave before training (`before`), what the adapted run did, and
    where a baseline that trains logs (its phase goes through the same loop and hooks)."""

    config: Config
    task: Task
    splits: Splits
    before: BeforeTraining | None
    adapted: AdaptedRun
    progress: Progress
    hooks: Sequence[Hook]
    path: Path | None = None
    resume: bool = False


# Each baseline below returns its `Baseline` with the seconds it spent before training (on
# the run's own pretrained pass); `run_baselines` adds the time it takes itself.


def constant(run: BaselineRun) -> Baseline:
    key, predicted, details = run.task.constant_baseline(run.splits.train, len(run.splits.test))
    return Baseline(key, CONSTANT_TITLES.get(key, key), predicted, 0.0, False, details)


def classical(run: BaselineRun) -> Baseline:
    task, splits = run.task, run.splits
    features, described = classical_features(model_kind_for(run.config), splits)
    predicted, details = task.linear_baseline(in_training_span(features), splits.train, splits.val)
    title = f"{task.linear_model} on {described}"
    return Baseline("classical", title, predicted, 0.0, False, details)


def base(run: BaselineRun) -> Baseline | None:
    before = run.before
    if before is None or before.outputs is None:
        return None
    predicted = run.task.predictions(before.outputs)
    title = "the pretrained model before adaptation"
    details = {"validation": before.validation}
    return Baseline("base", title, predicted, before.seconds, True, details)


def probe(run: BaselineRun) -> Baseline | None:
    before = run.before
    if before is None or before.features is None:
        return None
    features = in_training_span(standardised(before.features))
    predicted, details = run.task.linear_baseline(features, run.splits.train, run.splits.val)
    title = "linear probe on the frozen features"
    return Baseline("probe", title, predicted, before.seconds, True, details)


def undistilled(run: BaselineRun) -> Baseline:
    predicted, details = _undistilled(run)
    title = "the same student trained on the labels alone"
    return Baseline("undistilled", title, predicted, 0.0, True, details)


def scratch(run: BaselineRun) -> Baseline:
    predicted, details = _scratch(run)
    title = f"same network from scratch ({details['epochs']} epochs)"
    return Baseline("scratch", title, predicted, 0.0, False, details)


BASELINES: dict[str, Callable[[BaselineRun], Baseline | None]] = {
    "constant": constant,
    "classical": classical,
    "base": base,
    "probe": probe,
    "undistilled": undistilled,
    "scratch": scratch,
}
"""Every baseline by the name tasks (`Task.baselines`) and methods (`extra_baselines`) use;
None: it has nothing to compare (the pretrained pass it needs was not taken)."""


def run_baselines(run: BaselineRun, names: list[str]) -> list[Baseline]:
    """Each wanted baseline, fitted on the training split (validation for its settings) and
    scored on the test split. The baselines that train are phases of the run, watched by
    `run.hooks` (the metrics log)."""
    baselines = []
    for name in names:
        started = time.perf_counter()
        baseline = BASELINES[name](run)
        if baseline is not None:
            baseline.seconds += time.perf_counter() - started
            baselines.append(baseline)
    return baselines


CONSTANT_TITLES = {"majority": "majority class", "mean": "training mean"}


def scratch_config(config: Config, epochs: int) -> Config:
    tree = config.model_dump()
    tree["train"].update(
        lr=config.baselines.scratch_lr,
        backbone_lr=config.baselines.scratch_lr,
        epochs=epochs,
        cache="off",
    )
    tree["method"] = "finetune"
    tree["finetune"] = {"freeze": 0}
    return build_config(tree)


def standard_batchnorm_momentum(model: torch.nn.Module) -> None:
    """Give a from-scratch model PyTorch's usual BatchNorm momentum (0.1).

    Pretrained TF-style networks (EfficientNet: 0.01) keep running statistics that move
    slowly, which suits fine-tuning; trained from random initialisation for a few dozen steps,
    their running statistics stay near the initial (0, 1) and evaluation collapses to one
    class (measured: validation at chance while training accuracy reached 0.64). The baseline
    should be a fair from-scratch model, not that artefact.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.1


def _undistilled(run: BaselineRun) -> tuple[Arrays, dict[str, Any]]:
    """The student, built and initialised as the distilled one, trained with the same
    settings and epochs on the hard labels only: what the teacher added is the gain over it."""
    seed_everything(run.config.seed)
    method = run.adapted.method.without_teacher()
    model = method.build_model(run.config)
    model.to(training_device())
    return _trained(model, method, run.config, run, "undistilled")


def _scratch(run: BaselineRun) -> tuple[Arrays, dict[str, Any]]:
    """The same architecture from random initialisation, every parameter training; unless
    `baselines.scratch_epochs` is set, for as many epochs as fit in the adapted run's FLOPs."""
    config, splits, adapted = run.config, run.splits, run.adapted
    seed_everything(config.seed)
    model = adapted.method.build_model(config, pretrained=False)
    standard_batchnorm_momentum(model)
    model.to(training_device())
    epochs, details = config.baselines.scratch_epochs, {}
    if epochs is None:
        flops = stage_flops(model, splits.train.inputs)
        n_train, n_val = len(splits.train), len(splits.val)
        budget = adapted_flops(
            flops,
            adapted.method.cache_boundary(adapted.model),
            adapted.phase.cached,
            n_train,
            n_val,
            len(adapted.phase.fit.history),
        )
        epochs = matched_epochs(flops, budget, n_train, n_val, config.train.epochs)
        details["budget"] = f"matched to the adapted run: {budget / 1e12:.3g} TFLOP"
    from_scratch = scratch_config(config, epochs)
    method = Finetune(from_scratch, run.task)
    predicted, trained = _trained(model, method, from_scratch, run, "scratch")
    return predicted, details | trained


def _trained(
    model: AdaptableModel, method: Method, config: Config, run: BaselineRun, phase_name: str
) -> tuple[Arrays, dict[str, Any]]:
    """A baseline network (on its device), trained with `config` as one phase of `run`: its
    test predictions, and how many epochs it ran and which was best."""
    method.prepare(model)
    phase = run_phase(
        model,
        method,
        run.splits,
        config,
        run.progress,
        phase_name,
        run.hooks,
        run.path,
        run.resume,
    )
    return phase.predicted, {"epochs": len(phase.fit.history), "best_epoch": phase.fit.best_epoch}


__all__ = [
    "AdaptedRun",
    "Baseline",
    "BaselineRun",
    "BeforeTraining",
    "head_only",
    "run_baselines",
    "wanted_baselines",
]
