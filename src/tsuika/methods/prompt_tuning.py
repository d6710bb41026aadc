"""Prompt tuning (Lester, Al-Rfou & Constant 2021, arXiv:2104.08691): the whole language model
stays frozen and a few learned vectors — a soft prompt — are placed before every input; only
they train. PEFT holds them (`PromptTuningConfig`, initialised from embeddings of vocabulary
tokens), saves them as a standard PEFT folder, and its `PeftModelForCausalLM` generates with
them; tsuika's embedding stage puts them in front of the token embeddings the same way."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from tsuika.errors import TsuikaError
from tsuika.methods.adapters import Adapters
from tsuika.model_kinds import CAUSAL_LM
from tsuika.models.base import AdaptableModel

if TYPE_CHECKING:
    from peft import PeftConfig


def _embedding_stage(model: AdaptableModel) -> nn.Module:
    stage = model.stages[0]
    if model.model_kind != CAUSAL_LM or not hasattr(stage, "prompt"):
        raise TsuikaError(
            f"prompt-tuning adapts staged causal language models (task: causal-lm); "
            f"{model.spec.get('source')} is not one — use lora"
        )
    return stage


class PromptTuning(Adapters):
    name = "prompt-tuning"
    model_kinds = frozenset({CAUSAL_LM})
    default_lr = 3e-2
    remedies = frozenset()  # nothing pretrained trains; the soft prompt changes the positions
    sections = ("adapter",)

    def peft_config(self, targets: list[str]) -> PeftConfig:
        from peft import PromptTuningConfig, PromptTuningInit

        return PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=self.config.adapter.virtual_tokens,
            prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
        )

    def prepare(self, model: AdaptableModel) -> None:
        if model.adapters is not None:
            return
        _embedding_stage(model)
        for param in model.parameters():
            param.requires_grad_(False)
        from peft import get_peft_model

        peft = get_peft_model(model.library, self.peft_config([]))
        object.__setattr__(model, "adapters", peft)
        self._attach(model)

    @staticmethod
    def _attach(model: AdaptableModel) -> None:
        """The soft prompt into the embedding stage, as a submodule: its parameters are the
        model's (optimizer, checkpoints) under `stages.0.prompt.…`."""
        stage = _embedding_stage(model)
        stage.prompt = SoftPrompt(model.adapters)
        stage.prompt.requires_grad_(True)

    def cache_boundary(self, model: AdaptableModel) -> int:
        return 0  # the first stage trains

    @contextlib.contextmanager
    def unadapted(self, model: AdaptableModel) -> Iterator[None]:
        stage = _embedding_stage(model)
        stage.prompting = False
        try:
            yield
        finally:
            stage.prompting = True

    @classmethod
    def restore(cls, model: AdaptableModel, folder: Path) -> None:
        _embedding_stage(model)
        super().restore(model, folder)
        cls._attach(model)


class SoftPrompt(nn.Module):
    """PEFT's prompt encoder as a module: batch size → [B, n, width]."""

    def __init__(self, peft) -> None:
        super().__init__()
        self.encoder = peft.prompt_encoder[peft.active_adapter]
        object.__setattr__(self, "peft", peft)

    def forward(self, batch_size: int):
        return self.peft.get_prompt(batch_size=batch_size)
