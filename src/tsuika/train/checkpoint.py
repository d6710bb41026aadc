"""Checkpoints written atomically, and everything needed to resume a run exactly.

A checkpoint is a folder `step-<n>` holding the weights of every group that may train, the
best weights so far, the optimizer state, the RNG state and the loop counters. It is written
under a temporary name and renamed into place, and the previous checkpoint is deleted only
after that, so a kill at any moment leaves at least one complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


@dataclass
class LoopState:
    """The loop's counters: with the weights, optimizer and RNG, a complete resume point."""

    epoch: int = 1
    micro: int = 0
    """Micro-batches of `epoch` already done."""
    step: int = 0
    best_accuracy: float = -1.0
    best_loss: float = 0.0
    best_epoch: int = 0
    patience_left: int | None = None
    history: list[dict] = field(default_factory=list)
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    finished: bool = False


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_checkpoint(
    folder: Path,
    loop: LoopState,
    weights: dict[str, torch.Tensor],
    best: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{loop.step:07d}-{loop.epoch:04d}-{loop.micro:05d}"
    tmp = folder / (final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_contiguous(weights), str(tmp / "weights.safetensors"))
    save_file(_contiguous(best), str(tmp / "best.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
    (tmp / "loop.json").write_text(json.dumps(asdict(loop)))
    with open(tmp / "loop.json") as handle:
        os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in folder.iterdir():
        if old != final and old.name.startswith("step-"):
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint (temporary folders of a killed write are ignored)."""
    if not folder.is_dir():
        return None
    done = sorted(
        p
        for p in folder.iterdir()
        if p.name.startswith("step-")
        and not p.name.endswith(".tmp")
        and (p / "loop.json").is_file()
    )
    return done[-1] if done else None


def load_checkpoint(path: Path) -> tuple[LoopState, dict, dict, dict, dict]:
    """(loop state, weights, best weights, optimizer state, rng); tensors only, no pickles
    of arbitrary objects (`weights_only=True`)."""
    loop = LoopState(**json.loads((path / "loop.json").read_text()))
    weights = load_file(str(path / "weights.safetensors"))
    best = load_file(str(path / "best.safetensors"))
    optimizer = torch.load(path / "optimizer.pt", weights_only=True)
    rng = torch.load(path / "rng.pt", weights_only=True)
    return loop, weights, best, optimizer, rng
