"""Parameter-efficient adapters through PEFT: LoRA (Hu et al. 2021, arXiv:2106.09685: a frozen
W plus a learned low-rank update (α/r)·BA), DoRA (Liu et al. 2024, arXiv:2402.09353: LoRA on
the direction, a learned magnitude) and IA³ (Liu et al. 2022, arXiv:2205.05638: learned
rescaling vectors). Nothing is hand-written: `peft` injects its layers into the library's own
network (`model.library`), in place, so the stages run them and the saved adapter is a standard
PEFT folder with the library's names — `PeftModel.from_pretrained(base, folder)` loads it
without tsuika. The new head trains beside the adapters and is saved as safetensors."""

from __future__ import annotations

import warnings
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from tsuika.errors import TsuikaError
from tsuika.feed import Batch
from tsuika.methods.base import (
    Method,
    damaged,
    decay_groups,
    save_weights,
    stage_state,
    trained_groups,
)
from tsuika.methods.remedies import KeepsPretrainedFeatures
from tsuika.models.base import AdaptableModel, unwrapped

if TYPE_CHECKING:
    from peft import PeftConfig

# peft is imported where an adapter is made or loaded: importing it loads much of
# transformers (2.5 s), which a run of any other method, and `tsuika --help`, never needs.

ADAPTER = "adapter"
"""The PEFT folder inside a run's `model/`."""


def _stage_of(model: AdaptableModel) -> dict[int, int]:
    """id(module) → index of the stage whose subtree holds it."""
    owner: dict[int, int] = {}
    for index, stage in enumerate(model.stages):
        for module in stage.modules():
            owner.setdefault(id(module), index)
    return owner


def _adaptable(module: nn.Module) -> bool:
    """Layers every PEFT method here supports: Linear, and plain Conv2d without groups (a
    depthwise convolution has too few weights per output for a low-rank update; PEFT builds
    a convolution's LoRA factors with the layer's own class, so a subclass — which may pad
    or compute differently — is left alone)."""
    if isinstance(module, nn.Linear):
        return True
    return type(module) is nn.Conv2d and module.groups == 1


def adapter_targets(
    model: AdaptableModel, patterns: str | list[str], blocks: str | int
) -> list[str]:
    """Names (in `model.library`) of the layers to adapt: those matching `patterns` (or every
    adaptable layer for `all-linear`) whose parent lies inside a layer group — PEFT replaces a
    layer on its parent, and a stage holding the layer itself would keep running the old one —
    restricted to the top `blocks` groups that have any."""
    if model.library is None:
        raise TsuikaError(
            f"{model.spec.get('source')}: adapters need the library's network; this model "
            "source does not expose one (use finetune)"
        )
    owner = _stage_of(model)
    head = model.num_stages - 1
    found: dict[str, int] = {}
    for name, module in model.library.named_modules():
        if not name or not _adaptable(module):
            continue
        parent = model.library.get_submodule(name.rpartition(".")[0])
        stage = owner.get(id(parent))
        if stage is None or stage == head or owner.get(id(module)) != stage:
            continue
        if patterns != "all-linear" and not any(fnmatch(name, p) for p in patterns):
            continue
        found[name] = stage
    stages = sorted(set(found.values()))
    if blocks != "all":
        stages = stages[-int(blocks) :]
    chosen = [name for name, stage in found.items() if stage in stages]
    if not chosen:
        wanted = patterns if patterns == "all-linear" else ", ".join(patterns)
        raise TsuikaError(
            f"adapter.target_modules ({wanted}) matches no Linear or Conv2d layer inside the "
            f"layer groups of {model.spec.get('source')}; see `tsuika inspect`"
        )
    return chosen


class Adapters(KeepsPretrainedFeatures, Method):
    """The contract, for any PEFT method that injects into layers: adapters and the head
    train, everything else is frozen."""

    name = "adapters"
    sections = ("adapter", "finetune")  # finetune.lwf
    default_lr = 5e-4
    """`adapter.lr` when the config leaves it unset."""
    remedies = frozenset({"lwf"})

    def peft_config(self, targets: list[str]) -> PeftConfig:
        raise NotImplementedError

    def prepare(self, model: AdaptableModel) -> None:
        if model.adapters is not None:
            return  # idempotent: already injected
        settings = self.config.adapter
        targets = adapter_targets(model, settings.target_modules, settings.blocks)
        for param in model.parameters():
            param.requires_grad_(False)
        from peft import get_peft_model

        # get_peft_model freezes the library's own weights and injects trainable adapters in
        # place; the stages hold the same parent modules, so they now run the adapters.
        object.__setattr__(
            model, "adapters", get_peft_model(model.library, self.peft_config(targets))
        )
        model.head.requires_grad_(self.task.new_head)  # a pretrained LM head stays as it is

    def trainable_parameters(self, model: AdaptableModel) -> dict[str, nn.Parameter]:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def step(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """With `finetune.lwf`, the loss also keeps the outputs near the pretrained model's:
        an encoder's pooled features (computed once before training), or a causal LM's
        next-token distributions, from the same network with its adapters switched off."""
        if not self.config.finetune.lwf:
            return super().step(model, batch)
        if self.remembered is not None:
            pooled, outputs = self.pooled_step(model, batch)
            penalty = self.lwf_penalty(pooled, batch)
        else:
            state = self.task.inputs(batch.state, batch.targets)
            outputs = model(state, batch.start)
            network = unwrapped(model)
            training = network.training
            network.eval()  # the pretrained model as it predicts: no dropout
            with torch.no_grad(), network.adapters.disable_adapter():
                reference = model(state, batch.start)
            network.train(training)
            divergence = self.task.divergence(outputs, reference, batch.targets)
            penalty = self.config.finetune.lwf * divergence
        return {"loss": self.task.loss(outputs, batch.targets) + penalty, "outputs": outputs}

    def trainable_groups(self, model: AdaptableModel) -> set[int]:
        return {g.index for g in model.layer_groups() if g.trainable}

    def param_groups(self, model: AdaptableModel) -> list[dict]:
        """The adapters at `adapter.lr` without weight decay; the head as every method's."""
        train = self.config.train
        head = set(map(id, model.head.parameters()))
        adapters = [p for p in model.parameters() if p.requires_grad and id(p) not in head]
        groups = [
            {
                "params": adapters,
                "lr": self.config.adapter.lr or self.default_lr,
                "weight_decay": 0.0,
                "name": "adapters",
            }
        ]
        return groups + decay_groups(model.head, train.lr, train.weight_decay, "head")

    def save(self, model: AdaptableModel, folder: Path) -> None:
        """A standard PEFT folder (`adapter/`), and the new head (if any) as safetensors."""
        folder.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model.adapters.save_pretrained(str(folder / ADAPTER))
        head = {model.num_stages - 1} & trained_groups(model)
        save_weights(stage_state(model, head), folder)

    @classmethod
    def restore(cls, model: AdaptableModel, folder: Path) -> None:
        adapter = folder / ADAPTER
        if not (adapter / "adapter_config.json").is_file():
            raise damaged(adapter, "is not a PEFT adapter folder (no adapter_config.json)")
        if model.library is None:
            raise damaged(folder, "names adapters, but its base model exposes no network")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                from peft import PeftModel

                peft = PeftModel.from_pretrained(model.library, str(adapter))
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise damaged(adapter, f"cannot be loaded by PEFT ({err})") from None
        object.__setattr__(model, "adapters", peft)
        super().restore(model, folder)


PLAN_RANKS = (4, 16)
"""The LoRA ranks `tsuika plan` tries (alpha = 2 × rank)."""


class Lora(Adapters):
    name = "lora"
    dora = False

    @classmethod
    def plan_candidates(cls, groups: int, search: dict) -> list[tuple[str, dict]]:
        return [
            (
                f"lora r={r}",
                {"method": cls.name, "adapter": {"r": r, "alpha": 2 * r}, "train": search},
            )
            for r in PLAN_RANKS
        ]

    def peft_config(self, targets: list[str]) -> PeftConfig:
        settings = self.config.adapter
        from peft import LoraConfig

        return LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=targets,
            use_dora=self.dora,
        )


class Dora(Lora):
    name = "dora"
    dora = True


class IA3(Adapters):
    """IA³ rescales activations: inputs of feed-forward layers, outputs of the others."""

    name = "ia3"

    def peft_config(self, targets: list[str]) -> PeftConfig:
        feedforward = [t for t in targets if any(k in t for k in ("intermediate", "mlp", "fc1"))]
        from peft import IA3Config

        return IA3Config(target_modules=targets, feedforward_modules=feedforward)
