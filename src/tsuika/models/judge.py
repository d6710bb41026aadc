"""An independent image classifier that judges generated images.

Trained on real images only (never on generations), by `scripts/pretrain_fashion_diffusion.py`
for the bundled text-to-image model: it tells whether a generated image shows the new concept
(concept fidelity) and whether generations of the classes the model already knew still show
those classes (prior preservation). Its weights are safetensors beside a `judge.json` that
names the classes and the image size.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tsuika.files import atomic_file, write_atomic


class ImageJudge(nn.Module):
    """Three convolutions and a linear layer: images [B, C, S, S] in [-1, 1] → logits [B, K]."""

    def __init__(self, classes: list[str], size: int, channels: int = 1) -> None:
        super().__init__()
        self.classes, self.size, self.channels = list(classes), size, channels
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(128, len(classes)),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    @torch.no_grad()
    def classify(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Images in [-1, 1] → predicted class index [B] (eval mode)."""
        self.eval()
        return torch.cat(
            [self(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)]
        )

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(folder / "judge.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp))
        meta = {"classes": self.classes, "size": self.size, "channels": self.channels}
        write_atomic(folder / "judge.json", json.dumps(meta, indent=1) + "\n")

    @staticmethod
    def classes_at(folder: Path) -> list[str]:
        return list(json.loads((Path(folder) / "judge.json").read_text())["classes"])

    @classmethod
    def load(cls, folder: Path) -> ImageJudge:
        folder = Path(folder)
        meta = json.loads((folder / "judge.json").read_text())
        judge = cls(meta["classes"], int(meta["size"]), int(meta.get("channels", 1)))
        judge.load_state_dict(load_file(folder / "judge.safetensors"))
        return judge.eval()
