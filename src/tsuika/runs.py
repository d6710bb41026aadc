"""Run folders: created fresh (never overwritten), self-describing, loadable without the config.

<run>/config.yaml      the resolved configuration
<run>/metrics.jsonl    one line per epoch (and per baseline epoch)
<run>/summary.json     results, baselines, verdicts, timings
<run>/model/           weights.safetensors (trained groups) + meta.json (how to rebuild)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tsuika.errors import TsuikaError
from tsuika.models.base import AdaptableModel


def create_run_dir(parent: str | Path, name: str | None, default_name: str) -> Path:
    """Make a new, empty run folder. An explicit name that exists is an error; a default
    name gets a numeric suffix. `mkdir(exist_ok=False)` makes the claim atomic."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    if name:
        path = parent / name
        try:
            path.mkdir()
        except FileExistsError:
            raise TsuikaError(
                f"run folder {path} already exists; choose another `name` (runs are never "
                "overwritten)"
            ) from None
        return path
    stem = f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for attempt in range(1000):
        path = parent / (stem if attempt == 0 else f"{stem}-{attempt + 1}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise TsuikaError(f"could not create a new run folder under {parent}")


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def trained_state(model: AdaptableModel, groups: list[int]) -> dict[str, torch.Tensor]:
    state = {}
    for index in groups:
        for key, value in model.stages[index].state_dict().items():
            state[f"stages.{index}.{key}"] = value.detach().cpu().contiguous().clone()
    return state


def save_model(folder: Path, model: AdaptableModel, labels: list[str], groups: list[int]) -> None:
    """Save the weights of the groups that trained; the rest comes from the recorded source."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "weights.safetensors.tmp"
    save_file(trained_state(model, groups), str(tmp))
    os.replace(tmp, folder / "weights.safetensors")
    meta = {"spec": model.spec, "labels": labels, "trained_groups": groups, "format": 1}
    write_atomic(folder / "meta.json", json.dumps(meta, indent=2))


def load_model_folder(folder: Path) -> tuple[AdaptableModel, list[str], dict]:
    from tsuika.models import model_from_spec

    meta_path = folder / "meta.json"
    weights_path = folder / "weights.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        raise TsuikaError(
            f"{folder} is not a tsuika run model (needs meta.json and weights.safetensors); "
            "give the run folder that `tsuika train` printed"
        )
    meta = json.loads(meta_path.read_text())
    model = model_from_spec(meta["spec"])
    weights = load_file(str(weights_path))
    missing = [k for k in trained_state(model, meta["trained_groups"]) if k not in weights]
    if missing:
        raise TsuikaError(f"{weights_path} lacks {len(missing)} tensors (e.g. {missing[0]})")
    model.load_state_dict(weights, strict=False)
    model.eval()
    return model, meta["labels"], meta
