"""BitFit for tsuika: fine-tune only the bias terms of a pretrained encoder, and the new head.

Ben Zaken, Ravfogel & Goldberg 2021, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models" (arXiv:2106.10199): on small to medium data,
training the biases alone (about 0.1 % of BERT's parameters: those of the attention
projections, the feed-forward layers and the LayerNorms) comes close to full fine-tuning.

Written against tsuika's public method contract (`tsuika.methods.base`) only, as any
outside package would be; the entry point in pyproject.toml registers it as `bitfit`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from tsuika.errors import TsuikaError
from tsuika.methods.base import WEIGHTS, Method, damaged, decay_groups, save_weights
from tsuika.model_kinds import ENCODERS
from tsuika.models.base import AdaptableModel


class BitFitSettings(BaseModel):
    """`bitfit.*` in a config or on the command line: the plugin's own section, validated by
    tsuika as its built-in sections are (an unknown key or a bad value is one error line)."""

    model_config = ConfigDict(extra="forbid")
    lr: float = Field(1e-3, gt=0)
    """The biases' learning rate: the top of the paper's search ({1e-4, 4e-4, 7e-4, 1e-3});
    so few parameters need a far higher rate than full fine-tuning."""


def body_biases(model: AdaptableModel) -> dict[str, nn.Parameter]:
    """Every bias below the head, by its name in the model (LayerNorm and BatchNorm shifts
    included, as in the paper's b_LN)."""
    head = f"stages.{model.num_stages - 1}."
    return {
        name: param
        for name, param in model.named_parameters()
        if name.rpartition(".")[2] == "bias" and not name.startswith(head)
    }


class BitFit(Method):
    name = "bitfit"
    model_kinds = ENCODERS
    """Encoders: causal LMs such as Llama have no biases to train."""
    settings_model = BitFitSettings

    def prepare(self, model: AdaptableModel) -> None:
        biases = body_biases(model)
        if not biases:
            raise TsuikaError(
                f"method bitfit: {model.spec.get('source')} has no bias terms below the head; "
                "use lora or finetune"
            )
        model.requires_grad_(False)
        for param in biases.values():
            param.requires_grad_(True)
        model.head.requires_grad_(self.task.new_head)

    def trainable_parameters(self, model: AdaptableModel) -> dict[str, nn.Parameter]:
        head = f"stages.{model.num_stages - 1}."
        trained = body_biases(model)
        if self.task.new_head:
            trained |= {n: p for n, p in model.named_parameters() if n.startswith(head)}
        return trained

    def trainable_groups(self, model: AdaptableModel) -> set[int]:
        return {int(name.split(".")[1]) for name in self.trainable_parameters(model)}

    def param_groups(self, model: AdaptableModel) -> list[dict]:
        """The biases of each layer group at the bias rate, without weight decay (pulling a
        shift toward zero is no regulariser); the new head as every method trains it."""
        rate = self.config.part_settings(self.name).lr
        biases = body_biases(model)
        groups = []
        for group in model.layer_groups()[:-1]:
            mine = [biases[n] for n in biases if n.startswith(f"stages.{group.index}.")]
            if mine:
                groups.append({"params": mine, "lr": rate, "weight_decay": 0.0, "name": group.name})
        if self.task.new_head:
            train = self.config.train
            groups += decay_groups(model.head, train.lr, train.weight_decay, "head")
        return groups

    # -- saved format: the biases and the head, nothing else ------------------------------
    def save(self, model: AdaptableModel, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_weights(_saved_state(model), folder)

    @classmethod
    def restore(cls, model: AdaptableModel, folder: Path) -> None:
        """Load what `save` wrote, checked against the model: the same names and shapes."""
        path = folder / WEIGHTS
        try:
            weights = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise damaged(path, f"cannot be read ({err})") from None
        expected = _saved_state(model)
        for key, tensor in weights.items():
            if key not in expected:
                raise damaged(path, f"holds tensor {key}, which bitfit does not save")
            if tensor.shape != expected[key].shape:
                shape, wanted = tuple(tensor.shape), tuple(expected[key].shape)
                raise damaged(path, f"tensor {key} has shape {shape}, the model needs {wanted}")
        missing = [key for key in expected if key not in weights]
        if missing:
            raise damaged(path, f"lacks {len(missing)} tensors (e.g. {missing[0]})")
        model.load_state_dict(weights, strict=False)


def _saved_state(model: AdaptableModel) -> dict[str, torch.Tensor]:
    """What training changes, by state_dict name: the body's biases, the buffers of the
    layers that hold them (a BatchNorm whose shift trains updates its running statistics),
    and the head's whole state. A pretrained head (which bitfit does not train) is saved too:
    a few tensors, and `restore` need not know the task."""
    head = f"stages.{model.num_stages - 1}."
    biases = body_biases(model)
    owners = {name.rpartition(".")[0] for name in biases}
    parameters = dict(model.named_parameters())
    return {
        key: value
        for key, value in model.state_dict().items()
        if key.startswith(head)
        or key in biases
        or (key not in parameters and key.rpartition(".")[0] in owners)
    }
