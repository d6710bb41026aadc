"""Reading what a run saved: meta.json (checked before anything is built from it — a run
folder may come from anyone) and the trained model it describes.

Here, in the methods layer, because loading a run needs every method's `restore`, and a
method (`distill`) loads a finished run as its teacher.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tsuika.config import HeadConfig
from tsuika.errors import TsuikaError
from tsuika.methods import METHODS
from tsuika.methods.base import WEIGHTS, damaged
from tsuika.model_kinds import MODEL_KINDS
from tsuika.models.base import AdaptableModel
from tsuika.tasks import TASKS, task_from_meta
from tsuika.tasks.base import Task

META_FORMAT = 2
"""2: meta.json names the task, the method and the base model (1 had labels only)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _meta_problem(meta: Any) -> str | None:
    """What is wrong with a parsed meta.json, or None. Checked before anything is built from
    it: a run folder may come from someone else."""
    if not isinstance(meta, dict):
        return "is not a JSON object"
    missing = [key for key in ("format", "base", "model", "task", "method") if key not in meta]
    if missing:
        return f"lacks the key `{missing[0]}`"
    if not _is_int(meta["format"]) or meta["format"] != META_FORMAT:
        return f"has format {meta['format']!r}, this tsuika reads format {META_FORMAT}"
    if not isinstance(meta["base"], str) or not meta["base"]:
        return "`base` is not a model name"  # distill builds a student from it
    spec, task, method = meta["model"], meta["task"], meta["method"]
    if not isinstance(spec, dict):
        return "`model` is not an object"
    if not isinstance(spec.get("source"), str) or not spec["source"]:
        return "`model.source` is not a model name"
    if spec.get("model_kind", MODEL_KINDS[0]) not in MODEL_KINDS:
        return f"`model.model_kind` is not one of {', '.join(MODEL_KINDS)}"
    if not isinstance(spec.get("family", ""), str):  # what a run before issue 32 recorded
        return "`model.family` is not a model family"
    image = spec.get("image", {})  # image models: the input size the model was built for
    size = image.get("size", 1) if isinstance(image, dict) else None
    if not _is_int(size) or size < 1:
        return "`model.image` is not an object with a positive integer `size`"
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
    blocks = spec.get("keep_blocks")
    if blocks is not None and not (
        isinstance(blocks, list) and blocks and all(_is_int(b) and b >= 1 for b in blocks)
    ):
        return "`model.keep_blocks` is not a list of block numbers"
    if spec.get("weights") is not None and not isinstance(spec["weights"], str):
        return "`model.weights` is not a path"
    if not isinstance(method, str) or method not in METHODS:
        # A run of a plugin's method reads here only where that plugin is installed.
        plugin = " (a plugin's? install the package that provides it)" * isinstance(method, str)
        return f"`method` {method!r} is not one of {', '.join(METHODS)}{plugin}"
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
