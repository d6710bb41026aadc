"""Run folders: created fresh (never overwritten), self-describing, loadable without the config.

<run>/config.yaml      the resolved configuration
<run>/metrics.jsonl    one line per epoch (and per baseline epoch)
<run>/summary.json     results, baselines, verdicts, timings
<run>/model/           weights.safetensors (trained groups) + meta.json (how to rebuild)
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
from pathlib import Path

from tsuika.errors import TsuikaError
from tsuika.files import fresh_folder, write_atomic
from tsuika.methods.base import Method
from tsuika.methods.saved import META_FORMAT, load_model_folder, read_meta
from tsuika.models.base import AdaptableModel
from tsuika.tasks.base import Task

UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
"""What a default folder name drops: a model's `torchvision:` prefix, a `/` or a space in a
path or hub id, anything outside ASCII. Paths, shells, URLs, archives and other file
systems (a colon on Windows) read the rest as written."""


def _safe_folder_name(text: str) -> str:
    """`text` as a folder name of safe characters only: each run of others becomes one `-`
    (`transfer-torchvision:resnet18` → `transfer-torchvision-resnet18`); no leading dot (a
    hidden folder) or dash (read as an option), no trailing dash (the timestamp follows)."""
    safe = re.sub(r"-{2,}", "-", UNSAFE.sub("-", text)).lstrip(".-").rstrip("-")
    return safe or "run"


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


def _name_taken(path: Path) -> TsuikaError:
    return TsuikaError(
        f"run folder {path} already exists; choose another `name` (runs are never overwritten)"
    )


def check_run_dir(parent: str | Path, name: str | None) -> None:
    """Raise the error `create_run_dir(parent, name, …)` would raise for a bad `name` or
    `output`, creating nothing: commands that spend minutes before they make the folder
    (`plan`'s search, `train`'s model and timing, `--processes`' launch) fail first."""
    parent = Path(parent)
    if name is not None:
        _check_name(name)
    try:
        if name is not None and os.path.lexists(parent / name):
            raise _name_taken(parent / name)
        # The nearest folder that exists must be one that can be written in.
        existing = next(p for p in (parent, *parent.parents) if os.path.lexists(p))
    except ValueError as error:  # a NUL byte in the path
        raise _output_error(parent, error) from None
    if not existing.is_dir():
        raise _output_error(parent, NotADirectoryError(errno.ENOTDIR, "Not a directory"))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _output_error(parent, PermissionError(errno.EACCES, "Permission denied"))


def create_run_dir(parent: str | Path, name: str | None, default_name: str) -> Path:
    """Make a new, empty run folder. An explicit name is taken as given (one folder name, or
    an error) and may not exist yet; a default name is made safe, gets a timestamp and, if
    taken, a numeric suffix. `mkdir(exist_ok=False)` makes the claim atomic."""
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
            raise _name_taken(path) from None
        except OSError as error:
            raise _output_error(parent, error) from None
        return path
    stem = f"{_safe_folder_name(default_name)}-{time.strftime('%Y%m%d-%H%M%S')}"
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


def save_model(folder: Path, model: AdaptableModel, task: Task, method: Method, base: str) -> None:
    """The method's own weights (only what trained), and meta.json saying how to rebuild the
    rest: the base model's spec, the task (targets, label sets) and the method. Written in a
    fresh folder renamed into place, so a method's files never land on a planted link."""
    with fresh_folder(folder, replace=True) as staging:
        method.save(model, staging)
        write_atomic(
            staging / "meta.json", json.dumps(meta_of(model, task, method, base), indent=2)
        )


def meta_of(model: AdaptableModel, task: Task, method: Method, base: str) -> dict:
    return {
        "format": META_FORMAT,
        "base": base,
        "model": model.spec,
        "task": task.to_meta(),
        "method": method.name,
    }


__all__ = [
    "META_FORMAT",
    "check_run_dir",
    "create_run_dir",
    "load_model_folder",
    "read_meta",
    "save_model",
]
