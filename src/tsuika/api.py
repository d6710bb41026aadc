"""The Python API: `train(...) -> Run`, `load(run_dir) -> Run`, `run.predict([...])`."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

from tsuika.config import Config, DataConfig, build_config, load_config, merge, to_yaml
from tsuika.data.images import decode, list_images, load_image_splits
from tsuika.data.splits import Examples, Splits
from tsuika.data.tables import read_table, resolve
from tsuika.data.text import load_text_splits
from tsuika.errors import TsuikaError
from tsuika.evaluate.baselines import majority_predictions
from tsuika.evaluate.metrics import classification_metrics, paired_bootstrap
from tsuika.evaluate.verdicts import overfitting_verdict, transfer_verdict
from tsuika.methods import METHODS, Finetune, Method
from tsuika.models import load_model, modality_of
from tsuika.models.base import AdaptableModel
from tsuika.runs import (
    create_run_dir,
    load_model_folder,
    save_model,
    write_atomic,
)
from tsuika.train.cache import cache_boundary
from tsuika.train.distributed import barrier, is_main_process, training_device, world_size
from tsuika.train.feed import Feed
from tsuika.train.loop import FitResult, fit, predict_probs
from tsuika.train.progress import Progress


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def input_feed(model: AdaptableModel, examples: Examples, augment=None) -> Feed:
    """Raw inputs, encoded once (tokenised / decoded), entering the model at stage 0.
    With an active `augment` (images), batches are randomly augmented on every pass."""
    preprocess = model.preprocess
    items = preprocess.encode(examples.inputs)
    ragged = getattr(preprocess, "ragged", True)
    lengths = [preprocess.length(item) for item in items] if ragged else None
    labels = torch.tensor(examples.labels, dtype=torch.long)
    if augment is not None and augment.active:
        return Feed(items, labels, 0, preprocess.augmented(augment), lengths, augmented=True)
    return Feed(items, labels, 0, preprocess.collate, lengths)


def load_splits(config: Config) -> Splits:
    """The data for the model's kind; bad input fails here, before anything is written."""
    if modality_of(config.model) == "image":
        splits = load_image_splits(config.data)
        if splits.skipped:
            shown = "\n  ".join(splits.skipped[:10])
            more = f"\n  … and {len(splits.skipped) - 10} more" if len(splits.skipped) > 10 else ""
            warn(
                f"skipped {len(splits.skipped)} file(s) (data.strict=true makes this an "
                f"error):\n  {shown}{more}"
            )
        return splits
    return load_text_splits(config.data)


def warn(message: str) -> None:
    if is_main_process():
        Console(stderr=True, soft_wrap=True).print(f"[yellow]warning:[/yellow] {escape(message)}")


def read_inputs(model: AdaptableModel, inputs: list) -> list:
    """Texts stay texts; for image models, paths are decoded (a bad file is an error)."""
    if model.spec.get("family") != "image":
        return list(inputs)
    decoded = []
    for path in inputs:
        try:
            decoded.append(decode(Path(path), 10**9))
        except ValueError as err:
            raise TsuikaError(f"{path}: {err}") from None
    return decoded


class Run:
    """A trained model and its results; `tsuika.load(path)` gives the same object back."""

    def __init__(self, path: Path, model: AdaptableModel, labels: list[str], summary: dict):
        self.path = Path(path)
        self.model = model.eval()
        self.labels = labels
        self.summary = summary

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def predict_proba(self, inputs: list[str]) -> np.ndarray:
        if isinstance(inputs, str):
            inputs = [inputs]
        if len(inputs) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        examples = Examples(read_inputs(self.model, inputs), [0] * len(inputs))
        return predict_probs(self.model, input_feed(self.model, examples)).numpy()

    def predict(self, inputs: list[str]) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(inputs).argmax(-1)]

    def evaluate(
        self, data: str | Path, text_column: str = "text", label_column: str = "label"
    ) -> dict[str, float]:
        """Accuracy and macro-F1 on a labelled file (its labels must be known to the run);
        for image runs, an image folder or a CSV/JSONL of `path,label`."""
        if self.model.spec.get("family") == "image":
            return self._evaluate_images(str(data))
        table = read_table(resolve(str(data), "test"), text_column, label_column)
        index = {name: i for i, name in enumerate(self.labels)}
        for label, line in zip(table.labels, table.lines, strict=True):
            if label not in index:
                raise TsuikaError(
                    f"{data} line {line}: label `{label}` is not one this run was trained on "
                    f"({', '.join(self.labels)})"
                )
        truth = np.array([index[label] for label in table.labels])
        predicted = self.predict_proba(table.texts).argmax(-1)
        return {**classification_metrics(truth, predicted), "examples": len(truth)}

    def _evaluate_images(self, data: str) -> dict[str, float]:
        listing = list_images(data, "test", DataConfig(strict=True))
        unknown = sorted(set(listing.labels) - set(self.labels))
        if unknown:
            raise TsuikaError(
                f"{data}: class `{unknown[0]}` is not one this run was trained on "
                f"({', '.join(self.labels)})"
            )
        index = {name: i for i, name in enumerate(self.labels)}
        truth = np.array([index[label] for label in listing.labels])
        predicted = self.predict_proba([str(p) for p in listing.paths]).argmax(-1)
        return {**classification_metrics(truth, predicted), "examples": len(truth)}


def as_config(config: Config | dict | str | Path | None, overrides: dict[str, Any]) -> Config:
    if isinstance(config, Config):
        config = config.model_dump()
    base = load_config(config).model_dump() if isinstance(config, str | Path) else config or {}
    return build_config(merge(base, overrides))


class MetricsLog:
    """`metrics.jsonl`: one line per epoch of every phase, rewritten atomically from the
    histories (so a resumed run never repeats or loses an epoch)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.histories: dict[str, list[dict]] = {}

    def writer(self, phase: str):
        def write(history: list[dict]) -> None:
            self.histories[phase] = history
            if self.path:
                lines = [
                    json.dumps({"phase": name, **record})
                    for name, records in self.histories.items()
                    for record in records
                ]
                write_atomic(self.path, "\n".join(lines) + "\n")

        return write


def adapt(
    model: AdaptableModel,
    method: Method,
    splits: Splits,
    config: Config,
    progress: Progress,
    log: MetricsLog,
    phase: str,
    run_path: Path | None = None,
    resume: bool = False,
) -> tuple[FitResult, np.ndarray, dict[str, float]]:
    """Prepare, cache what stays frozen, fit, and predict the test split. Returns the fit
    result, test predictions and timings (seconds). Checkpoints go to
    `<run>/checkpoints/<phase>`; `resume` continues from the newest one."""
    rank = os.environ.get("RANK", "0")
    spill_dir = run_path / "cache" / phase / f"rank{rank}" if run_path else None
    checkpoints = run_path / "checkpoints" / phase if run_path else None
    train_cfg = config.train
    method.prepare(model)
    model.to(training_device())  # cache on the accelerator too, not only train there
    train_feed = input_feed(model, splits.train, config.data.augment)
    val_feed = input_feed(model, splits.val)
    timings: dict[str, float] = {}
    boundary = method.cache_boundary(model) if train_cfg.cache != "off" else 0
    if boundary > 0 and train_feed.augmented:
        # Augmented inputs differ every epoch: cached activations would be stale. The training
        # data runs through the frozen prefix each time; validation (not augmented) is cached.
        warn(
            f"{phase}: augmentation is on, so training activations are recomputed every "
            "epoch (feature cache used for validation only)"
        )
    if boundary > 0:
        started = time.perf_counter()
        cache_args = dict(
            boundary=boundary,
            batch_size=max(64, train_cfg.batch_size),
            mode=train_cfg.cache,
            memory_limit_mb=train_cfg.cache_memory_mb,
            progress=progress,
        )
        if not train_feed.augmented:
            train_feed = cache_boundary(
                model,
                train_feed,
                spill_dir=spill_dir and spill_dir / "train",
                label=f"{phase}: caching train",
                **cache_args,
            )
        val_feed = cache_boundary(
            model,
            val_feed,
            spill_dir=spill_dir and spill_dir / "val",
            label=f"{phase}: caching val",
            **cache_args,
        )
        timings["cache"] = time.perf_counter() - started

    result = fit(
        model,
        method,
        train_feed,
        val_feed,
        train_cfg,
        config.seed,
        log.writer(phase),
        progress,
        phase,
        checkpoints,
        resume,
    )
    timings["fit"] = result.seconds
    started = time.perf_counter()
    test_feed = input_feed(model, splits.test)
    predicted = predict_probs(model, test_feed).argmax(-1).numpy()
    timings["test"] = time.perf_counter() - started
    return result, predicted, timings


def scratch_config(config: Config) -> Config:
    tree = config.model_dump()
    tree["train"].update(
        lr=config.baselines.scratch_lr,
        backbone_lr=config.baselines.scratch_lr,
        epochs=config.baselines.scratch_epochs,
        cache="off",
    )
    tree["method"] = "finetune"
    tree["finetune"] = {"freeze": 0}
    return build_config(tree)


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
    model = load_model(
        config.model,
        len(splits.labels),
        config.head,
        config.train.max_length,
        pretrained=True,
        weights=config.model_weights,
    )
    method = METHODS[config.method](config)
    method.prepare(model)  # a bad freeze/group setting fails before any folder is made
    main = is_main_process()
    if resume is not None:
        path = Path(resume)
    elif main:
        default_name = f"{config.method}-{Path(config.model).name}"
        path = create_run_dir(config.output, config.name, default_name)
        write_atomic(path / "config.yaml", to_yaml(config))
    else:  # other data-parallel processes use the folder the main process made
        path = Path(config.output) / str(config.name)
    barrier()
    log = MetricsLog(path / "metrics.jsonl" if main else None)
    resuming = resume is not None

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
    return Run(path, model, splits.labels, summary)


def resumable_config(path: Path, config: object, overrides: dict[str, Any]) -> Config:
    """The configuration of an interrupted run; resuming with other settings is refused."""
    if config is not None or overrides:
        raise TsuikaError(
            "--resume continues a run with its own config.yaml; give no other config or overrides"
        )
    if not (path / "config.yaml").is_file():
        raise TsuikaError(f"cannot resume {path}: it has no config.yaml (not a run folder)")
    if (path / "summary.json").is_file():
        raise TsuikaError(f"run {path} already finished (summary.json exists); nothing to resume")
    return load_config(path / "config.yaml")


def run_baselines(
    config: Config,
    splits: Splits,
    progress: Progress,
    log: MetricsLog,
    truth: np.ndarray,
    path: Path | None = None,
    resume: bool = False,
) -> tuple[dict[str, dict], dict[str, float]]:
    baselines: dict[str, dict] = {}
    timings: dict[str, float] = {}
    if config.baselines.majority:
        label, predicted = majority_predictions(splits.train.labels, len(truth))
        baselines["majority"] = {
            **classification_metrics(truth, predicted),
            "label": splits.labels[label],
            "predicted": predicted,
        }
    if config.baselines.scratch:
        started = time.perf_counter()
        seed_everything(config.seed)
        scratch_cfg = scratch_config(config)
        model = load_model(
            config.model,
            len(splits.labels),
            config.head,
            config.train.max_length,
            pretrained=False,
            weights=config.model_weights,
        )
        method = Finetune(scratch_cfg)
        result, predicted, _ = adapt(
            model, method, splits, scratch_cfg, progress, log, "scratch", path, resume
        )
        baselines["scratch"] = {
            **classification_metrics(truth, predicted),
            "epochs": len(result.history),
            "best_epoch": result.best_epoch,
            "predicted": predicted,
        }
        timings["scratch"] = time.perf_counter() - started
    return baselines, timings


def build_summary(
    config: Config,
    splits: Splits,
    model: AdaptableModel,
    result: FitResult,
    truth: np.ndarray,
    predicted: np.ndarray,
    baselines: dict[str, dict],
    path: Path,
    trained: list[int],
) -> dict:
    groups = model.layer_groups()
    summary: dict[str, Any] = {
        "run": str(path),
        "model": config.model,
        "method": config.method,
        "labels": splits.labels,
        "data": {
            "train": len(splits.train),
            "validation": len(splits.val),
            "test": len(splits.test),
            "notes": splits.notes,
            "skipped_files": len(splits.skipped),
            "skipped": splits.skipped,
        },
        "parameters": {
            "total": sum(g.size for g in groups),
            "trained": sum(groups[i].size for i in trained),
            "trained_groups": [groups[i].name for i in trained],
        },
        "test": classification_metrics(truth, predicted),
        "training": {
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "best_val_accuracy": result.best_val_accuracy,
            "stopped_early": result.stopped_early,
            "optimizer_steps": result.steps,
            "processes": world_size(),
        },
        "baselines": {
            name: {k: v for k, v in values.items() if k != "predicted"}
            for name, values in baselines.items()
        },
        "verdicts": {},
    }
    fit_verdict = overfitting_verdict(result.history, result.best_epoch)
    summary["verdicts"]["overfitting"] = fit_verdict
    if "scratch" in baselines:
        gain = paired_bootstrap(
            truth,
            predicted,
            baselines["scratch"]["predicted"],
            config.baselines.bootstrap,
            config.seed,
        )
        summary["gain_over_scratch"] = gain
        summary["verdicts"]["transfer"] = transfer_verdict(gain, config.method)
    return summary


def load(path: str | Path) -> Run:
    """Open a run folder: predicts without the original config or data."""
    path = Path(path)
    if not path.is_dir():
        raise TsuikaError(f"run folder {path} not found")
    model, labels, _ = load_model_folder(path / "model")
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return Run(path, model, labels, summary)
