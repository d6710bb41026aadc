"""Fine-tuning that keeps what the model knew.

Pretrained groups train at small rates while the new head trains faster; the shallowest
groups can stay frozen (their features are the most general, Yosinski et al. 2014), rates can
decay with depth from the top (layer-wise decay, Clark et al. 2020), and groups can be
unfrozen one at a time from the top (gradual unfreezing, Howard & Ruder 2018, ULMFiT §3.2).
"""

from __future__ import annotations

from fnmatch import fnmatch

import torch
from torch import nn

from tsuika.config import Config
from tsuika.errors import TsuikaError
from tsuika.feed import Batch, Pretrained, Targets
from tsuika.methods.base import Method, decay_groups, set_trainable
from tsuika.methods.remedies import KeepsPretrainedFeatures
from tsuika.model_kinds import ENCODERS
from tsuika.models.base import AdaptableModel, State, unwrapped
from tsuika.tasks.base import Task

PROBE_STEPS = 100
PROBE_LR = 1e-2


def frozen_groups(model: AdaptableModel, freeze: int | str | list[str]) -> set[int]:
    """Indices of the groups a `freeze` setting names (never the head)."""
    groups = model.layer_groups()[:-1]
    if freeze == "all-but-head":
        return {g.index for g in groups}
    if isinstance(freeze, int):
        if freeze > len(groups):
            raise TsuikaError(
                f"finetune.freeze={freeze} but the model has {len(groups)} groups below the "
                "head (see `tsuika inspect`)"
            )
        return set(range(freeze))
    names = [g.name for g in groups]
    chosen = {g.index for g in groups if any(fnmatch(g.name, p) for p in freeze)}
    unmatched = [p for p in freeze if not any(fnmatch(n, p) for n in names)]
    if unmatched:
        raise TsuikaError(
            f"finetune.freeze pattern {unmatched[0]!r} matches no group; groups are "
            f"{', '.join(names)}"
        )
    return chosen


PLAN_RATES = (3e-5, 1e-4)
"""The backbone rates `tsuika plan` tries: the default, and 3× it (the recipe's contrastive
rate)."""


class Finetune(KeepsPretrainedFeatures, Method):
    name = "finetune"
    sections = ("finetune",)
    remedies = frozenset({"l2sp", "lwf"})
    shardable = True

    @classmethod
    def plan_candidates(cls, groups: int, search: dict) -> list[tuple[str, dict]]:
        """The upper half of the pretrained groups, then all above the embeddings, each at
        `PLAN_RATES`, from a probe's head."""
        upper = (groups - 1) // 2
        depths = [(upper, "upper half")] if upper > 1 else []  # a small model has one depth
        return [
            (
                f"finetune {where}, lr {rate:g}",
                {
                    "method": cls.name,
                    "finetune": {"freeze": freeze, "head_init": "probe"},
                    "train": {**search, "backbone_lr": rate},
                },
            )
            for freeze, where in [*depths, (1, "all above the embeddings")]
            for rate in PLAN_RATES
        ]

    def __init__(self, config: Config, task: Task) -> None:
        super().__init__(config, task)
        self.settings = config.finetune
        if self.settings.lwf and not task.model_kinds <= ENCODERS:
            raise TsuikaError(
                f"finetune.lwf with method {self.name} distils pooled features, which an "
                f"encoder has; for a {task.name} run use finetune.l2sp, or method lora with "
                "finetune.lwf (its adapters switch off to give the pretrained predictions)"
            )
        self.anchor: dict[str, torch.Tensor] = {}
        """L2-SP's pretrained values of the weights that train, by name."""

    @property
    def new_head(self) -> bool:
        """Whether the head starts untrained (it then trains at `train.lr`, not the
        pretrained rate)."""
        return self.task.new_head

    def _rates(self, model: AdaptableModel) -> dict[int, float]:
        """Learning rate of every group that may train during the run (0 = frozen)."""
        train, settings = self.config.train, self.settings
        frozen = frozen_groups(model, settings.freeze)
        groups = model.layer_groups()
        rates = {groups[-1].index: train.lr if self.new_head else train.backbone_lr}
        depth = 0
        for group in reversed(groups[:-1]):
            if group.size == 0:
                continue
            depth += 1
            if group.index not in frozen:
                rates[group.index] = train.backbone_lr * settings.layer_decay ** (depth - 1)
        for pattern, rate in settings.group_lr.items():
            matched = [g for g in groups if fnmatch(g.name, pattern)]
            if not matched:
                names = ", ".join(g.name for g in groups)
                raise TsuikaError(f"finetune.group_lr: {pattern!r} matches no group ({names})")
            for group in matched:
                rates[group.index] = rate
        rates = {i: rate for i, rate in rates.items() if rate > 0 and groups[i].size > 0}
        if not rates:
            raise TsuikaError("finetune: nothing would train (every group frozen or at rate 0)")
        return rates

    def _schedule(self, model: AdaptableModel) -> list[int]:
        """Trainable groups in the order they unfreeze: deepest first."""
        return sorted(self._rates(model), reverse=True)

    def prepare(self, model: AdaptableModel) -> None:
        model.frozen_statistics = self.settings.batchnorm == "frozen"
        order = self._schedule(model)
        start = order[:1] if self.settings.unfreeze_every else order
        set_trainable(model, set(start))
        if self.settings.l2sp:  # before any step (and before a checkpoint is loaded)
            groups = model.layer_groups()
            pretrained = {
                id(p) for i in order if i != groups[-1].index for p in groups[i].parameters()
            }
            self.anchor = {
                name: p.detach().clone()
                for name, p in model.named_parameters()
                if id(p) in pretrained
            }

    def step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        if not self.settings.lwf:
            out = super().step(model, batch)
            if self.anchor:
                out["loss"] = out["loss"] + self.penalty(model, None, batch)
            return out
        pooled, outputs = self.pooled_step(model, batch)
        loss = self.task.loss(outputs, batch.targets) + self.penalty(model, pooled, batch)
        return {"loss": loss, "outputs": outputs}

    def penalty(self, model: nn.Module, pooled: State | None, batch: Batch) -> torch.Tensor:
        """What keeps the pretrained knowledge: L2-SP toward the pretrained weights, and LwF
        toward the pretrained features of these examples (0 when both are off)."""
        weights = dict(unwrapped(model).named_parameters())
        total = torch.zeros((), device=next(iter(weights.values())).device)
        if self.anchor:
            distance = sum(((weights[n] - w0) ** 2).sum() for n, w0 in self.anchor.items())
            total = total + self.settings.l2sp / 2 * distance
        if pooled is not None and self.remembered is not None:
            total = total + self.lwf_penalty(pooled, batch)
        return total

    def trainable_groups(self, model: AdaptableModel) -> set[int]:
        return set(self._rates(model))

    def on_epoch_start(self, model: AdaptableModel, epoch: int) -> list[str]:
        """ULMFiT: after every `unfreeze_every` epochs, one more group (from the top) trains."""
        every = self.settings.unfreeze_every
        if not every:
            return []
        order = self._schedule(model)
        count = min(len(order), 1 + (epoch - 1) // every)
        wanted = set(order[:count])
        groups = model.layer_groups()
        newly = [groups[i].name for i in sorted(wanted) if not groups[i].trainable]
        if newly:
            set_trainable(model, wanted)
        return [f"unfroze {name}" for name in newly]

    def before_fit(self, model: AdaptableModel, pretrained: Pretrained) -> None:
        if self.settings.head_init == "probe" and self.new_head:
            targets = pretrained.feed("train").targets
            fit_head(model.head, pretrained.pooled("train"), targets, self.task, self.config)

    def param_groups(self, model: AdaptableModel) -> list[dict]:
        """Every group that may ever train gets its rate; those still frozen get no gradient
        and therefore no optimizer state until they unfreeze."""
        weight_decay = self.config.train.weight_decay
        groups = model.layer_groups()
        out = []
        for index, rate in sorted(self._rates(model).items()):
            module = groups[index].module
            trainable = {id(p) for p in module.parameters() if p.requires_grad}
            for p in module.parameters():
                p.requires_grad_(True)
            out += decay_groups(module, rate, weight_decay, groups[index].name)
            for p in module.parameters():
                p.requires_grad_(id(p) in trainable)
        return out


def fit_head(head: nn.Module, pooled: State, targets: Targets, task: Task, config: Config) -> None:
    """LP-FT's first stage (Kumar et al. 2022): the head alone on the pretrained model's
    pooled outputs of the training split — solved in closed form as `transfer` solves it
    (`head.fit: convex`), else full-batch AdamW with the task's loss."""
    solved = config.head.fit == "convex"
    if solved and task.solve_head(head, pooled["features"], targets, config.seed) is not None:
        return
    device = next(head.parameters()).device
    state = {key: value.to(device) for key, value in pooled.items()}
    targets = {key: value.to(device) for key, value in targets.items()}
    weight_decay = config.train.weight_decay
    optimizer = torch.optim.AdamW(head.parameters(), lr=PROBE_LR, weight_decay=weight_decay)
    was_training = head.training
    head.train()
    for _ in range(PROBE_STEPS):
        loss = task.loss(head(state), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    head.train(was_training)
