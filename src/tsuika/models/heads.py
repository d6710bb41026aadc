"""New heads, sized for the new label set, and the parameter-free pooler stage."""

from __future__ import annotations

import torch
from torch import nn

from tsuika.config import HeadConfig
from tsuika.models.base import State


class Head(nn.Module):
    """features [B, width] → {key: [B, outputs]}; linear, or a one-hidden-layer MLP."""

    def __init__(
        self,
        width: int,
        outputs: int,
        kind: str = "linear",
        hidden: int = 256,
        dropout: float = 0,
        key: str = "logits",
    ) -> None:
        super().__init__()
        if kind == "linear":
            layers: list[nn.Module] = [nn.Dropout(dropout), nn.Linear(width, outputs)]
        else:
            layers = [
                nn.Dropout(dropout),
                nn.Linear(width, hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, outputs),
            ]
        self.net = nn.Sequential(*layers)
        self.key = key

    def forward(self, state: State) -> State:
        return {self.key: self.net(state["features"])}

    def linear(self) -> nn.Linear | None:
        """The one Linear layer of a linear head (what a closed-form fit sets); None for an
        MLP, which has no convex fit."""
        layers = [m for m in self.net if isinstance(m, nn.Linear)]
        return layers[0] if len(layers) == 1 else None


class MultiHead(nn.Module):
    """One `Head` per target on the same features; their outputs concatenated under `key`
    ([B, Σ outputs]), in the order of `sizes`."""

    def __init__(self, width: int, sizes: list[int], config: HeadConfig, key: str = "logits"):
        super().__init__()
        self.heads = nn.ModuleList(
            Head(width, size, config.type, config.hidden, config.dropout, key) for size in sizes
        )
        self.key = key

    def forward(self, state: State) -> State:
        return {self.key: torch.cat([head(state)[self.key] for head in self.heads], dim=-1)}


def linear_layers(head: nn.Module) -> list[nn.Linear] | None:
    """The Linear layer of each output head (one, or one per column of a `MultiHead`), or
    None when the head is not linear (an MLP, or a head tsuika did not build)."""
    heads = list(head.heads) if isinstance(head, MultiHead) else [head]
    layers = [h.linear() if isinstance(h, Head) else None for h in heads]
    return None if any(layer is None for layer in layers) else layers  # type: ignore[return-value]


def set_linear(layer: nn.Linear, weight, bias) -> None:
    """Copy a solved linear map (numpy [out, in] and [out]) into `layer`."""
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=layer.weight.dtype))
        layer.bias.copy_(torch.as_tensor(bias, dtype=layer.bias.dtype))


class TokenPooler(nn.Module):
    """hidden [B, T, H] + attention_mask [B, T] → features [B, H].

    `mean` averages real tokens (sentence-transformers' mean pooling); `cls` takes token 0.
    `normalize` applies L2 normalisation, as the sentence-transformers pipeline does when it
    lists a Normalize module, so the features are the model's published embeddings.
    """

    def __init__(self, mode: str = "mean", normalize: bool = False) -> None:
        super().__init__()
        self.mode = mode
        self.normalize = normalize

    def forward(self, state: State) -> State:
        hidden = state["hidden"]
        if self.mode == "cls":
            features = hidden[:, 0]
        else:
            mask = state["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            features = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.normalize:
            features = nn.functional.normalize(features, dim=-1)
        return {"features": features}


class GlobalPooler(nn.Module):
    """hidden [B, C, H, W] → features [B, C] by global average pooling."""

    def forward(self, state: State) -> State:
        return {"features": torch.flatten(nn.functional.adaptive_avg_pool2d(state["hidden"], 1), 1)}
