"""The one model surface every method sees, whatever the source of the pretrained weights.

An `AdaptableModel` is an ordered list of *stages*, shallow → deep, ending in the new head.
Each stage is an `nn.Module` that maps a state dict to the next state dict:

    text:   {input_ids, attention_mask} → embeddings → block 1 … block N → pooler → head
    image:  {pixels} → stem → stage 1 … stage N → pooler → head

The stages are also the *layer groups* that freezing and per-group learning rates act on, and
the boundaries at which frozen activations can be cached: `forward(state, start, stop)` runs
any contiguous span, so a cache of `forward(batch, 0, b)` feeds `forward(cached, b)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tsuika.model_kinds import TEXT_ENCODER

State = dict[str, torch.Tensor]
HeadBuilder = Callable[[int], nn.Module]
"""Feature width → the new head (the task's): the last stage of every model."""


@dataclass
class LayerGroup:
    index: int
    name: str
    module: nn.Module

    def parameters(self) -> list[nn.Parameter]:
        return list(self.module.parameters())

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.module.parameters())


class AdaptableModel(nn.Module):
    """Pretrained stages + a new head, with the input spec the pretrained weights expect.

    `spec` is a JSON-able description from which the model loader rebuilds the same model
    (used by run folders); `preprocess` turns raw inputs (texts, images) into the first state.
    """

    def __init__(
        self,
        stages: list[tuple[str, nn.Module]],
        spec: dict[str, Any],
        preprocess: Any,
        library: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.stage_names = [name for name, _ in stages]
        self.stages = nn.ModuleList(module for _, module in stages)
        self.spec = spec
        self.preprocess = preprocess
        # The library's own network whose parts the stages run (a transformers model, a timm
        # or torchvision network, a registered module): adapters are injected there, so saved
        # names are the library's. Kept out of the module tree (`object.__setattr__`): its
        # parameters are the stages' and must not appear twice in `state_dict()`.
        object.__setattr__(self, "library", library)
        object.__setattr__(self, "adapters", None)
        self.frozen_statistics = False
        """True: every BatchNorm layer normalises with its running statistics in training
        too, and never updates them (`finetune.batchnorm: frozen`)."""
        """The PEFT model wrapping `library` once a method injected adapters."""

    @property
    def head(self) -> nn.Module:
        return self.stages[-1]

    @property
    def model_kind(self) -> str:
        """What the network was built as (`tsuika.model_kinds`), as its `spec` records it;
        a text encoder where nothing is recorded."""
        return self.spec.get("model_kind", TEXT_ENCODER)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def layer_groups(self) -> list[LayerGroup]:
        return [
            LayerGroup(i, name, module)
            for i, (name, module) in enumerate(zip(self.stage_names, self.stages, strict=True))
        ]

    def forward(self, state: State, start: int = 0, stop: int | None = None) -> State:
        for stage in self.stages[start:stop]:
            state = stage(state)
        return state

    def embed(self, state: State) -> torch.Tensor:
        """Pooled features [batch, width]: everything but the head."""
        return self.forward(state, 0, self.num_stages - 1)["features"]

    def train(self, mode: bool = True) -> AdaptableModel:
        """Train mode only for stages that train: frozen stages keep eval behaviour
        (BatchNorm running statistics and dropout unchanged), and so do frozen BatchNorm
        layers inside a training stage."""
        super().train(mode)
        if mode:
            for group in self.layer_groups():
                if not group.trainable:
                    group.module.eval()
            # Within a training group, a normalisation layer whose own weights are frozen
            # (adapters on a frozen base) keeps its running statistics too.
            for module in self.modules():
                params = list(module.parameters(recurse=False))
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
                    self.frozen_statistics or (params and not any(p.requires_grad for p in params))
                ):
                    module.eval()
        return self


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside whatever wraps it for data parallelism (DDP's `.module`)."""
    return getattr(model, "module", model)
