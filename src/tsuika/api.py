"""The Python API: `train(...) -> Run`, `load(run_dir) -> Run`, `run.predict([...])`."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from tsuika import __version__
from tsuika.adapt import MetricsLog, adapt, load_splits, run_baselines, seed_everything
from tsuika.config import Config, build_config, load_config, merge, to_yaml
from tsuika.errors import RunInterrupted, TsuikaError
from tsuika.evaluate.summary import build_summary
from tsuika.methods import METHODS
from tsuika.models import model_for
from tsuika.run import Run, load
from tsuika.runs import create_run_dir, save_model, write_atomic
from tsuika.train.distributed import barrier, is_main_process
from tsuika.train.progress import Progress

__all__ = ["Run", "load", "train"]

RUN_MARKER = ".tsuika-run"
"""Written first into every run folder tsuika creates: `--resume` trains only in such folders."""


def as_config(config: Config | dict | str | Path | None, overrides: dict[str, Any]) -> Config:
    if isinstance(config, Config):
        config = config.model_dump()
    base = load_config(config).model_dump() if isinstance(config, str | Path) else config or {}
    return build_config(merge(base, overrides))


def train(
    config: Config | dict | str | Path | None = None,
    *,
    resume: str | Path | None = None,
    **overrides: Any,
) -> Run:
    """Adapt a pretrained model to the data in `config` and evaluate it honestly.

    `config` is a YAML path, a dict or a `Config`; keyword overrides are sections or values,
    e.g. `train(model="minilm-l6", data={"train": "reviews.csv", "k": 64})`.
    `resume=RUN` continues an interrupted run in its own folder from its newest checkpoint.
    """
    started = time.perf_counter()
    if resume is not None:
        config = resumable_config(Path(resume), config, overrides)
    else:
        config = as_config(config, overrides)
    seed_everything(config.seed)
    splits = load_splits(config)  # bad data fails before anything is written
    model = model_for(config, len(splits.labels))
    method = METHODS[config.method](config)
    method.prepare(model)  # a bad freeze/group setting fails before any folder is made
    main = is_main_process()
    if resume is not None:
        path = Path(resume)
    elif main:
        default_name = f"{config.method}-{Path(config.model).name}"
        path = create_run_dir(config.output, config.name, default_name)
        write_atomic(path / RUN_MARKER, json.dumps({"tsuika": __version__, "pid": os.getpid()}))
        write_atomic(path / "config.yaml", to_yaml(config))
    else:  # other data-parallel processes use the folder the main process made
        path = Path(config.output) / str(config.name)
    barrier()
    resuming = resume is not None

    try:
        return _train_in(path, config, splits, model, method, resuming, started)
    except KeyboardInterrupt:
        raise RunInterrupted(path) from None


def _train_in(path, config, splits, model, method, resuming: bool, started: float) -> Run:
    main = is_main_process()
    log = MetricsLog(path / "metrics.jsonl" if main else None)
    truth = np.array(splits.test.labels)
    with Progress(config.progress and main) as progress:
        result, predicted, timings = adapt(
            model, method, splits, config, progress, log, config.method, path, resuming
        )
        trained = [g.index for g in model.layer_groups() if g.trainable]
        if main:
            save_model(path / "model", model, splits.labels, trained)
        baselines, baseline_timings = run_baselines(
            config, splits, progress, log, truth, path, resuming
        )

    summary = build_summary(
        config, splits, model, result, truth, predicted, baselines, path, trained
    )
    summary["timings"] = {**timings, **baseline_timings, "total": time.perf_counter() - started}
    if main:
        write_atomic(path / "summary.json", json.dumps(summary, indent=2))
        # The run is complete: activation caches and resume points are no longer needed.
        shutil.rmtree(path / "cache", ignore_errors=True)
        shutil.rmtree(path / "checkpoints", ignore_errors=True)
    barrier()
    return Run(path, model, splits.labels, summary, config.data)


def resumable_config(path: Path, config: object, overrides: dict[str, Any]) -> Config:
    """The configuration of an interrupted run; resuming with other settings is refused."""
    if config is not None or overrides:
        raise TsuikaError(
            "--resume continues a run with its own config.yaml; give no other config or overrides"
        )
    if not path.is_dir():
        raise TsuikaError(f"cannot resume {path}: no such run folder")
    if (path / "summary.json").is_file():
        raise TsuikaError(f"run {path} already finished (summary.json exists); nothing to resume")
    # Only a folder tsuika created for a run may be trained in: resuming writes weights and
    # metrics there, and any other folder may hold files that are not ours to touch.
    if not (path / RUN_MARKER).is_file() or not (path / "config.yaml").is_file():
        raise TsuikaError(
            f"cannot resume {path}: it is not an unfinished tsuika run (no {RUN_MARKER} and "
            "config.yaml written by `tsuika train`); start a new run instead"
        )
    return load_config(path / "config.yaml")
