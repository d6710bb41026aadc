"""The method contract: which parameters learn, and how.

    configured(config)           the config with what the method implies filled in (optional)
    build_model(config, task)    the network to adapt (default: the model `config` names)
    prepare(model)               once, after the model is on its device; idempotent
    trainable_parameters(model)  every parameter that may train during the run, by name
    param_groups(model)          optimizer groups (rates, weight decay)
    precompute(model, feed, …)   what stays fixed, computed once (the frozen prefix)
    on_epoch_start(model, e)     change what trains at an epoch boundary (optional)
    step(model, batch)           {"loss": mean loss per unit, "outputs": model outputs}
    save(model, folder) / restore(model, folder)   the method's own weights format
    evidence(model, splits, summary)   extra summary sections (optional)

The loop calls only these and never asks which method it runs; the task gives the loss. A new
method is one module plus one line in `tsuika.methods.BUILT_IN` (or an entry point of another
package: `tsuika.plugins`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tsuika.config import Config, ReadsSettings, resolved
from tsuika.data.splits import Splits
from tsuika.errors import TsuikaError
from tsuika.feed import Batch, Feed, Pretrained
from tsuika.feed.cache import CacheSettings, cache_boundary
from tsuika.files import atomic_file
from tsuika.model_kinds import CAUSAL_LM, ENCODERS, kinds_in_words
from tsuika.models import model_for
from tsuika.models.base import AdaptableModel
from tsuika.tasks import model_kind_for
from tsuika.tasks.base import Task

WEIGHTS = "weights.safetensors"


def set_trainable(model: AdaptableModel, trainable_groups: set[int]) -> None:
    """Exactly the parameters of `trainable_groups` train; every other one gets no gradient
    (and so no optimizer state)."""
    for group in model.layer_groups():
        for param in group.parameters():
            param.requires_grad_(group.index in trainable_groups)


def decay_groups(module: nn.Module, lr: float, weight_decay: float, name: str) -> list[dict]:
    """Optimizer groups for the trainable parameters of `module`: weight decay on matrices
    only, none on biases and norm scales (as in BERT and nanoGPT `configure_optimizers`)."""
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = []
    if decay:
        groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": name})
    if no_decay:
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": name})
    return groups


def stage_state(model: AdaptableModel, stages: set[int]) -> dict[str, torch.Tensor]:
    """The full state (parameters and buffers, e.g. BatchNorm statistics) of some stages, keyed
    as in `model.state_dict()` — the one place saved weights get their names."""
    prefixes = tuple(f"stages.{i}." for i in stages)
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}


def trained_groups(model: AdaptableModel) -> set[int]:
    """Groups that train at the end of a run (gradual unfreezing may never reach some of the
    groups a method declares): what a summary reports and what `save` writes."""
    return {g.index for g in model.layer_groups() if g.trainable}


class Method(ReadsSettings):
    """Whole layer groups train or stay frozen; subclasses say which, and how fast."""

    name = "base"
    model_kinds: frozenset[str] = ENCODERS | {CAUSAL_LM}
    """The kinds of model (`tsuika.model_kinds`) this method can adapt."""
    tasks: frozenset[str] | None = None
    """The tasks this method can train (None: every task of those model kinds)."""
    remedies: frozenset[str] = frozenset()
    """Which forgetting remedies this method applies: `l2sp` (pretrained weights train),
    `lwf` (the pretrained model's outputs can be had); a config asking for another is refused."""
    shardable = False
    """Its weights live in the model's layer groups and nothing else holds the model during
    training, so `train.fsdp` may shard them (`train/sharding.py`)."""

    @classmethod
    def misfit(cls, task: Task | type[Task]) -> str | None:
        """Why this method cannot train `task` (None: it can)."""
        if not cls.model_kinds & task.model_kinds:
            return (
                f"method {cls.name} adapts {kinds_in_words(cls.model_kinds)} models, "
                f"and task {task.name} trains {kinds_in_words(task.model_kinds, article=True)}"
            )
        if cls.tasks is not None and task.name not in cls.tasks:
            return (
                f"method {cls.name} trains {' or '.join(sorted(cls.tasks))} tasks, not {task.name}"
            )
        return None

    @classmethod
    def fits(cls, task: Task | type[Task]) -> bool:
        return cls.misfit(task) is None

    def __init__(self, config: Config, task: Task) -> None:
        if misfit := self.misfit(task):
            raise TsuikaError(misfit)
        refused = [k for k in ("l2sp", "lwf") if getattr(config.finetune, k)]
        refused = [k for k in refused if k not in self.remedies]
        if refused:
            allowed = " or ".join(f"finetune.{k}" for k in sorted(self.remedies))
            hint = f"use {allowed}" if allowed else "it keeps the pretrained weights as they are"
            raise TsuikaError(
                f"finetune.{refused[0]} does not apply to method {self.name} ({hint})"
            )
        self.config = config
        self.task = task

    @classmethod
    def configured(cls, config: Config, chosen: dict | None = None) -> Config:
        """The one resolve step of a run's settings (`tsuika.config.resolved`): what the user
        set wins over `chosen` (a recipe's settings for this data), which wins over this
        method's `defaults`, which win over the global defaults; then what follows from them
        (`completed`). Recorded in the run's config.yaml, so resuming sees the same;
        idempotent."""
        return cls.completed(resolved(config, cls.defaults(config), chosen=chosen))

    @classmethod
    def defaults(cls, config: Config) -> dict:
        """Nested settings this method implies where nobody chose them."""
        return {}

    @classmethod
    def completed(cls, config: Config) -> Config:
        """`config` with the values that follow from the resolved settings, checked."""
        return config

    def build_model(self, config: Config, pretrained: bool = True) -> AdaptableModel:
        """The network this method adapts: the model `config` names with the task's new head
        (`pretrained=False`: the same architecture at random initialisation)."""
        task = self.task
        return model_for(
            config,
            lambda width: task.head(width, config.head),
            pretrained,
            model_kind_for(config, task),
        )

    def prepare(self, model: AdaptableModel) -> None:
        raise NotImplementedError

    def param_groups(self, model: AdaptableModel) -> list[dict]:
        raise NotImplementedError

    def trainable_groups(self, model: AdaptableModel) -> set[int]:
        """Layer groups with a parameter that may train at some point of the run."""
        raise NotImplementedError

    def trainable_parameters(self, model: AdaptableModel) -> dict[str, nn.Parameter]:
        """Every parameter that may change during the run, by its name in the model (as
        torchtune's `get_adapter_params`); all others must stay exactly as loaded."""
        prefixes = tuple(f"stages.{i}." for i in self.trainable_groups(model))
        return {n: p for n, p in model.named_parameters() if n.startswith(prefixes)}

    def cache_boundary(self, model: AdaptableModel) -> int:
        """How many leading groups stay frozen for the whole run (their output is cached)."""
        return min(self.trainable_groups(model), default=model.num_stages)

    def precompute(
        self, model: AdaptableModel, feed: Feed, settings: CacheSettings, name: str
    ) -> Feed:
        """A feed whose fixed part is computed once: here the frozen prefix's activations
        (deterministic inputs only: an augmented feed is returned as it is)."""
        boundary = self.cache_boundary(model)
        if settings.mode == "off" or boundary <= feed.start or feed.augmented:
            return feed
        if settings.shared is None:
            return cache_boundary(model, feed, boundary, settings, name)
        key = (name, len(feed), feed.start, boundary)
        if key not in settings.shared:
            settings.shared[key] = cache_boundary(model, feed, boundary, settings, name)
        return settings.shared[key]

    @classmethod
    def plan_candidates(cls, groups: int, search: dict) -> list[tuple[str, dict]]:
        """What `tsuika plan` tries of this method, cheapest first: (label, settings) each.
        `groups`: the model's layer groups (freeze depths count from them); `search`: plan's
        `train` settings for a candidate that trains by epochs (bounded, early-stopped).
        Read from the class that declares it, never inherited (`contrastive` is not one of
        `finetune`'s schedules); none by default."""
        return []

    def extra_baselines(self) -> frozenset[str]:
        """Baselines this method adds to the task's (`Task.baselines` names them all): e.g.
        distillation's student trained on the labels alone."""
        return frozenset()

    def unadapted(self, model: AdaptableModel) -> contextlib.AbstractContextManager:
        """A context in which the model, before training, computes as the pretrained one
        (for baselines). Weights start as loaded and adapters start as the identity, so
        this is usually nothing; a soft prompt must be left out."""
        return contextlib.nullcontext()

    def before_fit(self, model: AdaptableModel, pretrained: Pretrained) -> None:
        """Last preparation with the pretrained model's outputs at hand (after `precompute`,
        before the first step): e.g. a head fitted on its features."""

    def remember(self, model: AdaptableModel, pretrained: Pretrained) -> None:
        """Keep what training is compared with, before the first step; unlike `before_fit`,
        also when resuming (a checkpoint does not hold it). LwF's features
        (`tsuika.methods.remedies`)."""

    def unused_validation(self, model: AdaptableModel) -> str | None:
        """Why nothing this run keeps is chosen on validation (None: something is — the best
        epoch, or early stopping): its held-out examples can train instead."""
        train = self.config.train
        if train.select == "last" and train.patience is None:
            return "the last epoch is kept, without early stopping"
        return None

    def epoch_examples(self, train_examples: int) -> int:
        """Examples one training epoch passes through the network (what its cost scales
        with); a method that repeats or adds examples says how many."""
        return train_examples

    def on_epoch_start(self, model: AdaptableModel, epoch: int) -> list[str]:
        """Change what trains at an epoch boundary; returns events to log."""
        return []

    def step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        outputs = model(self.task.inputs(batch.state, batch.targets), batch.start)
        return {"loss": self.task.loss(outputs, batch.targets), "outputs": outputs}

    def evidence(self, model: AdaptableModel, splits: Splits, summary: dict) -> dict:
        """Summary sections only this method can give (after training)."""
        return {}

    # -- the method's own saved format -----------------------------------------------------
    def save(self, model: AdaptableModel, folder: Path) -> None:
        """The trained stages' full state, as safetensors; the rest comes from the source."""
        folder.mkdir(parents=True, exist_ok=True)
        save_weights(stage_state(model, trained_groups(model)), folder)

    @classmethod
    def restore(cls, model: AdaptableModel, folder: Path) -> None:
        """Load what `save` wrote, checked against the model: every stage it holds must be
        complete, and every tensor must exist in the model with the same shape (a mismatch
        would otherwise be a bare RuntimeError from torch)."""
        path = folder / WEIGHTS
        try:
            weights = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise damaged(path, f"cannot be read ({err})") from None
        expected = model.state_dict()
        for key, tensor in weights.items():
            if key not in expected:
                raise damaged(path, f"holds tensor {key}, which the model does not have")
            if tensor.shape != expected[key].shape:
                shape, wanted = tuple(tensor.shape), tuple(expected[key].shape)
                raise damaged(path, f"tensor {key} has shape {shape}, the model needs {wanted}")
        stages = {key.split(".")[1] for key in weights}
        missing = [k for k in expected if k.split(".")[1] in stages and k not in weights]
        if missing:
            raise damaged(path, f"lacks {len(missing)} tensors (e.g. {missing[0]})")
        model.load_state_dict(weights, strict=False)


def save_weights(state: dict[str, torch.Tensor], folder: Path) -> None:
    """`state` as `<folder>/weights.safetensors`, written atomically."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    with atomic_file(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp))


def damaged(path: Path, problem: str) -> TsuikaError:
    return TsuikaError(
        f"{path}: {problem}; the run folder is damaged — re-run training or restore it from a copy"
    )
