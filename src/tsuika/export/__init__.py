"""Models that leave tsuika: `tsuika export RUN --format onnx|hf` writes a new folder that
runs without tsuika, and checks that it reproduces the run before keeping it.

- `onnx`: one graph from token ids (or pixels) to the task's output (`onnx_graph`).
- `hf`: a folder plain transformers, timm or torch loads, with a few documented lines for the
  pooling and the head (`hf_folder`); for a causal LM, the whole merged model.

Adapters are merged into the weights they adapt (PEFT's `merge_and_unload`: W + (α/r)·BA for
LoRA), so no export needs `peft`. Every export carries a model card (README.md, `card`) and an
export.json describing its inputs, outputs and labels.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tsuika.errors import TsuikaError
from tsuika.export.card import model_card
from tsuika.export.graph import Written
from tsuika.export.hf_folder import write_hf
from tsuika.export.int8_check import refusal
from tsuika.export.onnx_graph import write_onnx
from tsuika.files import fresh_folder, refuse_link, write_atomic
from tsuika.finished_run import Run, load
from tsuika.run_files import PREDICTIONS, read_predictions
from tsuika.tasks import Task

FORMATS = ("onnx", "hf")


def export(
    run_path: str | Path,
    format: str = "hf",
    out: str | Path | None = None,
    int8: bool = False,
    int8_tolerance: float | None = None,
) -> Path:
    """Write the run as a new folder `out` (default `<run>/export-<format>`); never
    overwrites. `int8` (onnx only) adds a copy with int8 weights, kept if it loses at most
    `int8_tolerance` of the run's metric (default `int8_check.INT8_TOLERANCE`)."""
    if format not in FORMATS:
        raise TsuikaError(f"unknown export format `{format}`; give one of {', '.join(FORMATS)}")
    if int8 and format != "onnx":
        raise TsuikaError("--int8 quantises an ONNX graph; use it with --format onnx")
    if int8_tolerance is not None and not (int8 and 0 <= int8_tolerance <= 1):
        raise TsuikaError(
            "--int8-tolerance is the metric an int8 copy may lose, from 0 to 1, with --int8"
        )
    run_path = Path(run_path)
    out = Path(out) if out is not None else run_path / f"export-{format}"
    refuse_link(out)
    if out.exists():
        raise TsuikaError(f"{out} already exists; exports never overwrite, choose another --out")
    run = load(run_path)
    if format not in run.task.export_forms:
        raise TsuikaError(unexported(run.task, format))
    read_predictions(run.path / PREDICTIONS, run.task)  # checked before any work: the card reads it
    if format == "hf":
        return staged(out, lambda folder: write_hf(run, folder, out.name), run)
    written: list[Written] = []

    def write(folder: Path) -> Written:
        written.append(write_onnx(run, folder, out.name, int8, int8_tolerance))
        return written[0]

    staged(out, write, run)
    reason = refusal(written[0].description.get("int8", {}).get("task", {}), out)
    if reason:  # the float32 export is in place; the int8 copy is not
        raise TsuikaError(reason)
    return out


def unexported(task: Task, format: str) -> str:
    """Why a run of `task` has no `format` export, and what it has instead."""
    other = [f for f in task.export_forms if f != format]
    instead = f": use --format {other[0]}" if other else ""
    return f"a {task.name} run has no {format} export ({task.no_export}){instead}"


def export_merged(run_path: str | Path, out: str | Path) -> Path:
    """The `hf` export (adapters merged) in the new folder `out`: for a causal LM, the whole
    model as a transformers folder."""
    return export(run_path, "hf", out)


def staged(out: Path, write: Callable[[Path], Written], run: Run) -> Path:
    """Write into a hidden folder beside `out` and rename it when complete: a failed export
    (or a failed check) leaves no half folder behind, and of two exports to the same `out`
    at once the second is told the folder exists."""
    with fresh_folder(out) as staging:
        written = write(staging)
        description = json.dumps(written.description, indent=2, ensure_ascii=False)
        write_atomic(staging / "export.json", description + "\n")
        write_atomic(staging / "README.md", model_card(run, written))
    return out
