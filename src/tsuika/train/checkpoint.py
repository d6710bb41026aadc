"""Checkpoints written atomically, and everything needed to resume a run exactly.

A checkpoint is a folder `step-<n>` holding the weights of every group that may train, the
best weights so far, the optimizer state, the RNG state and the loop counters. It is written
under a temporary name and renamed into place, and the previous checkpoint is deleted only
after that, so a kill at any moment leaves at least one complete checkpoint.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tsuika.errors import TsuikaError
from tsuika.files import fresh_folder, match_umask, refuse_link, write_atomic


# Strict, no unknown keys: a damaged loop.json must fail on load, not resume with wrong counters.
@with_config(ConfigDict(extra="forbid", strict=True))
@dataclass
class LoopState:
    """The loop's counters: with the weights, optimizer and RNG, a complete resume point."""

    epoch: int = 1
    micro: int = 0
    """Micro-batches of `epoch` already done."""
    step: int = 0
    best_score: float | None = None
    """The task's selection metric at the best epoch so far (None: no epoch yet)."""
    best_loss: float = 0.0
    best_epoch: int = 0
    patience_left: int | None = None
    history: list[dict] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=dict)
    """The task's additive training statistics of the epoch so far."""
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
    refuse_link(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{loop.step:07d}-{loop.epoch:04d}-{loop.micro:05d}"
    with fresh_folder(final, replace=True) as tmp:
        for name, state in (("weights.safetensors", weights), ("best.safetensors", best)):
            save_file(_contiguous(state), str(tmp / name))
            match_umask(tmp / name)  # save_file makes 0600 files; the others get the umask
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        write_atomic(tmp / "loop.json", json.dumps(asdict(loop)))  # fsynced: written last
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


class _Damaged(Exception):
    """A checkpoint file that cannot be used; `load_checkpoint` turns it into a TsuikaError."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")


def _reason(error: BaseException) -> str:
    # Library messages can run to paragraphs (torch's weights-only hint): keep the first line.
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else "unexpected end of file" if isinstance(error, EOFError) else ""
    return (text[:120] + "…" if len(text) > 120 else text) or type(error).__name__


_LOOP_STATE = TypeAdapter(LoopState)
_LOOP_KEYS = [f.name for f in fields(LoopState)]


def _load_loop(path: Path) -> LoopState:
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, ValueError) as error:  # ValueError: bad JSON or bad UTF-8
        raise _Damaged(path.name, _reason(error)) from None
    if not isinstance(data, dict):
        raise _Damaged(path.name, "not a JSON object")
    # Every key is required: a missing counter silently taking its default would resume at
    # the wrong point.
    missing = [key for key in _LOOP_KEYS if key not in data]
    if missing:
        raise _Damaged(path.name, f"lacks `{missing[0]}`")
    try:
        return _LOOP_STATE.validate_json(text)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise _Damaged(path.name, f"`{where}`: {first['msg']}") from None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise _Damaged(path.name, _reason(error)) from None


def _load_pickle(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """A `torch.save`d dict, with only tensors and plain containers (`weights_only=True`)."""
    try:
        data = torch.load(path, weights_only=True)
    except Exception as error:
        # Damaged bytes reach torch's zip reader and weights-only unpickler in any state:
        # fuzzing gives RuntimeError, EOFError, UnpicklingError, OSError, IndexError, KeyError,
        # UnicodeDecodeError, AttributeError... No list is complete, and here every failure
        # of reading a file we wrote means the file is damaged.
        raise _Damaged(path.name, _reason(error)) from None
    if not isinstance(data, dict) or any(key not in data for key in keys):
        raise _Damaged(path.name, f"not a dict with {', '.join(f'`{k}`' for k in keys)}")
    return data


def _damaged(path: Path, error: _Damaged) -> TsuikaError:
    return TsuikaError(
        f"checkpoint {path} is damaged ({error}); delete that folder to resume from the "
        "previous checkpoint (or the start), or start a new run"
    )


def unreadable(path: Path, part: str, error: BaseException) -> TsuikaError:
    """The error for a checkpoint whose `part` could not be read (`error` what the reader
    raised), worded as for every other damaged checkpoint."""
    return _damaged(path, _Damaged(part, _reason(error)))


def _load_rng(path: Path) -> dict[str, Any]:
    rng = _load_pickle(path, ("torch",))
    if not isinstance(rng["torch"], torch.Tensor) or rng["torch"].dtype != torch.uint8:
        raise _Damaged(path.name, "`torch` is not a random generator state")
    return rng


def load_checkpoint(path: Path) -> tuple[LoopState, dict, dict, dict, dict]:
    """(loop state, weights, best weights, optimizer state, rng); tensors only, no pickles
    of arbitrary objects (`weights_only=True`). A damaged file is a TsuikaError naming it."""
    try:
        loop = _load_loop(path / "loop.json")
        weights = _load_tensors(path / "weights.safetensors")
        best = _load_tensors(path / "best.safetensors")
        optimizer = _load_pickle(path / "optimizer.pt", ("state", "param_groups"))
        rng = _load_rng(path / "rng.pt")
    except _Damaged as error:
        raise _damaged(path, error) from None
    return loop, weights, best, optimizer, rng


def load_counters(path: Path) -> tuple[LoopState, dict]:
    """(loop state, rng) of a checkpoint whose tensors are sharded (`train/sharding.py`)."""
    try:
        return _load_loop(path / "loop.json"), _load_rng(path / "rng.pt")
    except _Damaged as error:
        raise _damaged(path, error) from None
