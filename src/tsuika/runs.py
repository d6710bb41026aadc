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

from pydantic import ValidationError

from tsuika.config import HeadConfig
from tsuika.errors import TsuikaError
from tsuika.methods import METHODS
from tsuika.methods.base import WEIGHTS, Method, damaged
from tsuika.models.base import AdaptableModel
from tsuika.tasks import TASKS, task_from_meta
from tsuika.tasks.base import Task

META_FORMAT = 2
"""2: meta.json names the task, the method and the base model (1 had labels only)."""


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


def save_model(folder: Path, model: AdaptableModel, task: Task, method: Method, base: str) -> None:
    """The method's own weights (only what trained), and meta.json saying how to rebuild the
    rest: the base model's spec, the task (targets, label sets) and the method."""
    method.save(model, folder)
    meta = {
        "format": META_FORMAT,
        "base": base,
        "model": model.spec,
        "task": task.to_meta(),
        "method": method.name,
    }
    write_atomic(folder / "meta.json", json.dumps(meta, indent=2))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _meta_problem(meta: Any) -> str | None:
    """What is wrong with a parsed meta.json, or None. Checked before anything is built from
    it: a run folder may come from someone else."""
    if not isinstance(meta, dict):
        return "is not a JSON object"
    missing = [key for key in ("format", "model", "task", "method") if key not in meta]
    if missing:
        return f"lacks the key `{missing[0]}`"
    if not _is_int(meta["format"]) or meta["format"] != META_FORMAT:
        return f"has format {meta['format']!r}, this tsuika reads format {META_FORMAT}"
    spec, task, method = meta["model"], meta["task"], meta["method"]
    if not isinstance(spec, dict):
        return "`model` is not an object"
    if not isinstance(spec.get("source"), str) or not spec["source"]:
        return "`model.source` is not a model name"
    if not isinstance(spec.get("head"), dict):
        return "`model.head` is not an object"
    try:
        HeadConfig(**spec["head"])
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"`model.head.{where}`: {first['msg']}" if where else f"`model.head`: {first['msg']}"
    if "max_length" in spec and (not _is_int(spec["max_length"]) or spec["max_length"] < 1):
        return "`model.max_length` is not a positive integer"
    if spec.get("weights") is not None and not isinstance(spec["weights"], str):
        return "`model.weights` is not a path"
    if not isinstance(method, str) or method not in METHODS:
        return f"`method` {method!r} is not one of {', '.join(METHODS)}"
    if not isinstance(task, dict) or not isinstance(task.get("name"), str):
        return f"`task.name` is not one of {', '.join(TASKS)}"
    if task["name"] not in TASKS:
        return f"`task.name` is not one of {', '.join(TASKS)}"
    problem = TASKS[task["name"]].meta_problem(task)
    return f"`task`: {problem}" if problem else None


def read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError covers bad JSON and bad UTF-8
        raise damaged(path, f"cannot be read ({error})") from None
    problem = _meta_problem(meta)
    if problem:
        raise damaged(path, problem)
    return meta


def load_model_folder(folder: Path) -> tuple[AdaptableModel, Task, dict]:
    """The trained model of a run (in eval mode), its task and its meta.json."""
    from tsuika import models

    meta_path = folder / "meta.json"
    if not meta_path.is_file() or not (folder / WEIGHTS).is_file():
        raise TsuikaError(
            f"{folder} is not a tsuika run model (needs meta.json and {WEIGHTS}); "
            "give the run folder that `tsuika train` printed"
        )
    meta = read_meta(meta_path)
    task = task_from_meta(meta["task"])
    head = HeadConfig(**meta["model"]["head"])
    model = models.model_from_spec(meta["model"], lambda width: task.head(width, head))
    METHODS[meta["method"]].restore(model, folder)
    model.eval()
    return model, task, meta
