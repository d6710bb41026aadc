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
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tsuika.config import HeadConfig
from tsuika.errors import TsuikaError
from tsuika.files import match_umask
from tsuika.models.base import AdaptableModel

META_FORMAT = 1


def _check_name(name: str) -> None:
    """A run name is one folder name: it must not lead elsewhere (`../x`, `a/b`, `/abs`)."""
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if not name.strip():
        problem = "is empty"
    elif any(s in name for s in separators):
        problem = "contains a path separator"
    elif name in (".", ".."):
        problem = "is not a folder name"
    elif "\0" in name:
        problem = "contains a NUL character"
    else:
        return
    raise TsuikaError(
        f"`name` {name!r} {problem}; give a plain folder name such as `my-run` "
        "(use `output` to choose where run folders go)"
    )


def _output_error(parent: Path, error: OSError | ValueError) -> TsuikaError:
    # Name the part of the path that is a file: "Not a directory" alone does not say which.
    blocker = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        reason = f"{blocker} is a file"
    elif isinstance(error, OSError) and error.strerror:
        reason = error.strerror.lower()
    else:
        reason = str(error)
    return TsuikaError(
        f"output folder {parent} cannot be created or written ({reason}); choose another `output`"
    )


def create_run_dir(parent: str | Path, name: str | None, default_name: str) -> Path:
    """Make a new, empty run folder. An explicit name that exists is an error; a default
    name gets a numeric suffix. `mkdir(exist_ok=False)` makes the claim atomic."""
    parent = Path(parent)
    if name is not None:
        _check_name(name)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        raise _output_error(parent, error) from None
    if name is not None:
        path = parent / name
        try:
            path.mkdir()
        except FileExistsError:
            raise TsuikaError(
                f"run folder {path} already exists; choose another `name` (runs are never "
                "overwritten)"
            ) from None
        except OSError as error:
            raise _output_error(parent, error) from None
        return path
    stem = f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for attempt in range(1000):
        path = parent / (stem if attempt == 0 else f"{stem}-{attempt + 1}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as error:
            raise _output_error(parent, error) from None
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
    match_umask(tmp)  # before the rename, so the final name never has the 0600 mode
    os.replace(tmp, folder / "weights.safetensors")
    meta = {"spec": model.spec, "labels": labels, "trained_groups": groups, "format": META_FORMAT}
    write_atomic(folder / "meta.json", json.dumps(meta, indent=2))


def _damaged(path: Path, problem: str) -> TsuikaError:
    return TsuikaError(
        f"{path}: {problem}; the run folder is damaged — re-run training or restore it from a copy"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _meta_problem(meta: Any) -> str | None:
    """What is wrong with a parsed meta.json, or None. Checked before anything is built from
    it: a run folder may come from someone else."""
    if not isinstance(meta, dict):
        return "is not a JSON object"
    missing = [key for key in ("spec", "labels", "trained_groups", "format") if key not in meta]
    if missing:
        return f"lacks the key `{missing[0]}`"
    if not _is_int(meta["format"]) or meta["format"] != META_FORMAT:
        return f"has format {meta['format']!r}, this tsuika reads format {META_FORMAT}"
    spec, labels, groups = meta["spec"], meta["labels"], meta["trained_groups"]
    if not isinstance(spec, dict):
        return "`spec` is not an object"
    if not isinstance(spec.get("source"), str) or not spec["source"]:
        return "`spec.source` is not a model name"
    if not _is_int(spec.get("num_labels")):
        return "`spec.num_labels` is not an integer"
    if not isinstance(spec.get("head"), dict):
        return "`spec.head` is not an object"
    try:
        HeadConfig(**spec["head"])
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"`spec.head.{where}`: {first['msg']}" if where else f"`spec.head`: {first['msg']}"
    if "max_length" in spec and (not _is_int(spec["max_length"]) or spec["max_length"] < 1):
        return "`spec.max_length` is not a positive integer"
    if spec.get("weights") is not None and not isinstance(spec["weights"], str):
        return "`spec.weights` is not a path"
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        return "`labels` is not a list of strings"
    if len(labels) < 2 or len(set(labels)) != len(labels):
        return "`labels` needs at least two different labels"
    if len(labels) != spec["num_labels"]:
        return f"has {len(labels)} labels but `spec.num_labels` is {spec['num_labels']}"
    if not isinstance(groups, list) or not all(_is_int(group) for group in groups):
        return "`trained_groups` is not a list of integers"
    return None


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError covers bad JSON and bad UTF-8
        raise _damaged(path, f"cannot be read ({error})") from None
    problem = _meta_problem(meta)
    if problem:
        raise _damaged(path, problem)
    return meta


def _read_weights(path: Path, model: AdaptableModel, groups: list[int]) -> dict[str, torch.Tensor]:
    """The saved tensors, checked against the model: the names the trained groups need, and
    every tensor's shape (a mismatch would otherwise be a bare RuntimeError from torch)."""
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise _damaged(path, f"cannot be read ({error})") from None
    expected = trained_state(model, groups)
    missing = [key for key in expected if key not in weights]
    if missing:
        raise _damaged(path, f"lacks {len(missing)} tensors (e.g. {missing[0]})")
    model_state = model.state_dict()
    for key, tensor in weights.items():
        if key not in model_state:
            raise _damaged(path, f"holds tensor {key}, which the model does not have")
        if tensor.shape != model_state[key].shape:
            shape, wanted = tuple(tensor.shape), tuple(model_state[key].shape)
            raise _damaged(path, f"tensor {key} has shape {shape}, the model needs {wanted}")
    return weights


def load_model_folder(folder: Path) -> tuple[AdaptableModel, list[str], dict]:
    from tsuika.models import model_from_spec

    meta_path = folder / "meta.json"
    weights_path = folder / "weights.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        raise TsuikaError(
            f"{folder} is not a tsuika run model (needs meta.json and weights.safetensors); "
            "give the run folder that `tsuika train` printed"
        )
    meta = _read_meta(meta_path)
    model = model_from_spec(meta["spec"])
    bad = [g for g in meta["trained_groups"] if not 0 <= g < model.num_stages]
    if bad:
        raise _damaged(meta_path, f"trained group {bad[0]} does not exist in the model")
    weights = _read_weights(weights_path, model, meta["trained_groups"])
    model.load_state_dict(weights, strict=False)
    model.eval()
    return model, meta["labels"], meta
