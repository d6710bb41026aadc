"""The Python API: `train(...) -> Run`, `load(run_dir) -> Run`, `run.predict([...])`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tsuika.advice import Finding, data_checks
from tsuika.advice.forgetting import Forgetting, retention
from tsuika.config import Config, build_config, load_config, merge, to_yaml, unread_settings
from tsuika.console import say, warn
from tsuika.data.reading import load_splits
from tsuika.data.splits import Splits
from tsuika.errors import RunInterrupted, TsuikaError
from tsuika.evaluate.baselines import (
    AdaptedRun,
    Baseline,
    BaselineRun,
    BeforeTraining,
    head_only,
    run_baselines,
    wanted_baselines,
)
from tsuika.evaluate.records import test_records, write_records
from tsuika.evaluate.summary import build_summary
from tsuika.files import refuse_links_in, write_atomic
from tsuika.finished_run import Run, load
from tsuika.methods import method_class
from tsuika.methods.base import Method
from tsuika.methods.cost import Speed, duration, epochs_within, estimate, measure_speed
from tsuika.methods.recipe import choose
from tsuika.model_kinds import TEXT_ENCODER
from tsuika.models.base import AdaptableModel
from tsuika.models.text import fitted_length
from tsuika.report import PREDICTIONS, REPORT, write_report
from tsuika.run_folder import check_run_dir, create_run_dir, save_model
from tsuika.tasks import model_kind_for, task_for
from tsuika.tasks.base import Task
from tsuika.train.distributed import (
    barrier,
    from_main,
    is_main_process,
    training_device,
    world_size,
)
from tsuika.train.hooks import Hook, add_sections
from tsuika.train.metrics_log import MetricsLog
from tsuika.train.phase import PhaseResult, run_phase, seed_everything
from tsuika.train.progress import Progress
from tsuika.train.sharding import check_sharding
from tsuika.train.tracking import Tracker, check_tracking, open_tracker

__all__ = ["Run", "load", "train"]

RUN_MARKER = ".tsuika-run"
"""Written first into every run folder tsuika creates: `--resume` trains only in such folders."""


def as_config(config: Config | dict | str | Path | None, overrides: dict[str, Any]) -> Config:
    # Only what was set explicitly is carried over (defaults fill in again), so `method: auto`
    # can tell the settings a user chose from the ones its recipe may choose.
    if isinstance(config, Config):
        config = config.model_dump(exclude_unset=True)
    if isinstance(config, str | Path):
        base = load_config(config).model_dump(exclude_unset=True)
    else:
        base = config or {}
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
    if resume is not None:
        config = resumable_config(Path(resume), config, overrides)
    else:
        config = as_config(config, overrides)
    return Training(config, Path(resume) if resume is not None else None).run()


def warn_unread(given: Config, method: Method, task: Task) -> None:
    """One warning naming the settings that the run's method and task do not read (each
    part declares its `sections`): `adapter.r=16` with `method: finetune` changes nothing."""
    read = set(type(method).config_sections()) | set(type(task).config_sections())
    unread = unread_settings(given, read)
    if unread:
        warn(
            f"{', '.join(unread)}: method {method.name} and task {task.name} do not read "
            "these settings, so they change nothing; remove them, or name the method they "
            "belong to"
        )


class Training:
    """One run of `train`, step by step (torchtune's recipe shape): `setup` (everything that
    may refuse the run, before any folder is written) → `open_folder` → `fit` → `run_baselines` →
    `summarize` → `write`. What a step decides stays here for the steps after it.

    The summary is built from sections: the task's (`build_summary`), the method's
    (`evidence`), the notes the setup took from the data, the hooks' (`Hook.summary`), then
    the run's measurements. `hooks` watch the adaptation's fit (the phase named after the
    method) after the forgetting monitor, each `epoch_ended` seeing what those before it
    added; the metrics log and the progress bars watch every phase, the baselines' too."""

    def __init__(
        self, config: Config, resume: Path | None = None, hooks: Sequence[Hook] = ()
    ) -> None:
        self.config, self.resume = config, resume
        self.hooks = list(hooks)
        self.started = time.perf_counter()
        self.notes: dict[str, Any] = {}
        """What the run decided from its data before training: `imbalance`, `input_length`,
        `estimate`, `recipe` (summary sections, and a line each on the console)."""
        self.findings: list[Finding] = []
        """The data checks run before training (a new run's only)."""

    # Set by the steps, in this order.
    task: Task
    splits: Splits
    method: Method
    model: AdaptableModel
    path: Path
    log: MetricsLog
    progress: Progress
    phase: PhaseResult
    wanted: list[str]
    """The baselines to run."""
    before: BeforeTraining | None
    baselines: list[Baseline]
    summary: dict[str, Any]

    @property
    def resuming(self) -> bool:
        return self.resume is not None

    def run(self) -> Run:
        """Every step; a folder this call created is removed again when the run fails before
        it has anything worth keeping, and Ctrl-C keeps it to resume."""
        self.setup()
        made = self.open_folder()  # the only folder a failure may remove
        try:
            if made is not None:
                marker = {"tsuika": version("tsuika"), "pid": os.getpid()}
                write_atomic(made / RUN_MARKER, json.dumps(marker))
                write_atomic(made / "config.yaml", to_yaml(self.config))
            barrier()
            with tracked(self.config, self.path, self.resuming) as tracker:
                main = is_main_process()
                sink = tracker.log if tracker else None
                self.log = MetricsLog(self.path / "metrics.jsonl" if main else None, sink)
                with Progress(self.config.progress and main) as self.progress:
                    self.fit()
                    self.run_baselines()
                self.summarize()
                self.write(tracker)
        except KeyboardInterrupt:  # the folder stays, with what it checkpointed, to resume
            raise RunInterrupted(self.path) from None
        except Exception:
            if made is not None:
                discard_unstarted(made)
            raise
        return Run(self.path, self.model, self.task, self.summary, self.config.data)

    def setup(self) -> None:
        """The config resolved, the data read and checked, the method and model built and
        everything chosen from the data (recipe, input length, budget); a bad setting, data
        file or retain file fails here, before any folder is written."""
        config, resuming = self.config, self.resuming
        given = config  # as the user gave it: what they set, before any part's defaults
        if config.method != "auto":
            config = method_class(config.method).configured(config)
        # A missing tracker package or a bad store, a taken `name` or a bad `output` fail
        # before the data is read, the model built and timed, and any folder written.
        check_tracking(config, self.resume.parent if self.resume is not None else None)
        check_sharding(given, world_size())
        if not resuming and is_main_process():
            check_run_dir(config.output, config.name)
        seed_everything(config.seed)
        model_kind = model_kind_for(config)
        task = self.task = task_for(config)
        splits = read_data(config, model_kind, task)  # bad data fails before anything is written
        self.findings = data_warnings(splits, task) if not resuming else []
        # A task without classes refuses `weights`/`sampler` here, before any folder is written.
        notes = self.notes
        tell = config.progress and is_main_process()
        imbalance = task.handle_imbalance(config.train.balance, splits.train)
        if imbalance:
            notes["imbalance"] = imbalance
        recipe = None
        if config.method == "auto":  # never when resuming: a run's config names its method
            recipe = choose(config, task, splits, model_kind)
            config = recipe.applied(config)
        method, model = adapting(config, task)  # a bad freeze setting fails before any folder
        if not resuming and is_main_process():
            warn_unread(given, method, task)
        if config.train.max_length is None and model.model_kind == TEXT_ENCODER:
            length, notes["input_length"] = fitted_length(model, splits.train.inputs)
            config = with_train(config, max_length=length)
        held_out = len(splits.val)
        splits = validation_given_back(config, task, method, model, splits)
        if len(splits.val) < held_out and tell:
            say(splits.notes[-1])  # the summary keeps it with the data's other notes
        if task.new_head and not resuming:
            config, method, model, notes["estimate"] = budgeted(
                config, task, splits, method, model, recipe is not None, self.started
            )
        if recipe is not None:
            notes["recipe"] = {"method": config.method, "reason": recipe.reason}
            cuts = notes.get("estimate", {}).get("cuts", [])
            notes["recipe"]["reason"] += "".join(f"; {cut}" for cut in cuts)
        if tell:
            for key in ("imbalance", "recipe", "input_length", "estimate"):
                if key in notes:
                    say(line_of(key, notes[key]))
        retained = retention(config, task, method, model)  # a bad retain file too
        if retained is not None:
            self.hooks.insert(0, Forgetting(retained, model, method.remedies))
        self.config, self.splits, self.method, self.model = config, splits, method, model

    def open_folder(self) -> Path | None:
        """The run's folder: a resumed run's own, or a new one made by the main process
        (returned there: the folder this run made) and used by every other process."""
        config, made = self.config, None
        if self.resume is not None:
            self.path = self.resume
            return None
        if is_main_process():
            default_name = f"{config.method}-{Path(config.model).name}"
            made = create_run_dir(config.output, config.name, default_name)
        # Every other process, on this machine or another, uses the folder the main one made
        # (what it passes in is not read).
        self.path = Path(from_main(str(made or "")))
        return made

    def fit(self) -> None:
        """The adaptation, one phase watched by the hooks, the metrics log and progress; the
        pretrained model's features and outputs taken before it for the baselines that need
        them; the adapted model saved."""
        config, task, method, model = self.config, self.task, self.method, self.model
        self.wanted = wanted_baselines(config, task, method, model)
        self.before = None
        if "probe" in self.wanted or "base" in self.wanted:
            self.before = BeforeTraining(task, "probe" in self.wanted, "base" in self.wanted)
        self.phase = run_phase(
            model,
            method,
            self.splits,
            config,
            self.progress,
            config.method,
            [*self.hooks, self.log],
            self.path,
            self.resuming,
            self.before,
        )
        if is_main_process():
            save_model(self.path / "model", model, task, method, config.model)

    def run_baselines(self) -> None:
        """Every wanted baseline; those that train are phases of the run in metrics.jsonl."""
        compared_with = BaselineRun(
            self.config,
            self.task,
            self.splits,
            self.before,
            AdaptedRun(self.method, self.model, self.phase),
            self.progress,
            [self.log],
            self.path,
            self.resuming,
        )
        self.baselines = run_baselines(compared_with, self.wanted)

    def summarize(self) -> None:
        """summary.json's content, section by section (see the class)."""
        config, splits, model, phase = self.config, self.splits, self.model, self.phase
        summary = build_summary(
            config,
            self.task,
            splits,
            model,
            phase.fit,
            phase.predicted,
            self.baselines,
            self.path,
            head_only(self.method, model),
        )
        add_sections(summary, self.method.evidence(model, splits, summary))
        add_sections(summary, self.noted())
        for hook in [*self.hooks, self.log, self.progress]:
            add_sections(summary, hook.summary(summary))
        summary["timings"] = {
            **phase.timings,
            "baselines": sum(b.seconds for b in self.baselines),
            "total": time.perf_counter() - self.started,
        }
        if phase.frozen_passes is not None:
            summary["frozen_passes"] = phase.frozen_passes
        summary["memory"] = peak_memory()
        summary["disk"] = disk_usage(self.path / "model")
        if phase.train_tokens and phase.fit.seconds > 0:
            tokens = phase.train_tokens * len(phase.fit.history)
            summary["throughput"] = {
                "training_tokens": tokens,
                # Fit time includes the per-epoch validation passes: a conservative figure.
                "tokens_per_second": tokens / phase.fit.seconds,
            }
        self.summary = summary

    def noted(self) -> dict[str, Any]:
        """The setup's notes and data checks as summary sections."""
        sections = dict(self.notes)
        if "estimate" in sections:  # against the measured time in `timings`
            estimate = sections["estimate"]
            sections["estimate"] = {k: v for k, v in estimate.items() if k not in ("words", "eta")}
        if self.findings:
            sections["checks"] = [finding.as_dict() for finding in self.findings]
        return sections

    def write(self, tracker: Tracker | None) -> None:
        """The summary, predictions and report (main process); the caches and resume points,
        no longer needed, removed; the tracker told the run finished."""
        path, summary, phase = self.path, self.summary, self.phase
        if is_main_process():
            write_atomic(path / "summary.json", json.dumps(summary, indent=2))
            records = test_records(
                self.task,
                self.splits.test,
                phase.outputs,
                phase.predicted,
                self.baselines,
                phase.test_lengths,
            )
            write_records(path / PREDICTIONS, records)
            if self.config.report:
                write_report(path)
            # The run is complete: activation caches and resume points are no longer needed.
            shutil.rmtree(path / "cache", ignore_errors=True)
            shutil.rmtree(path / "checkpoints", ignore_errors=True)
            if tracker is not None:
                files = [path / name for name in ("summary.json", "config.yaml", REPORT)]
                tracker.finish(summary, [f for f in files if f.is_file()])
        barrier()


KEPT_AFTER_FAILURE = ("checkpoints", "metrics.jsonl", "model", "summary.json")
"""What makes the folder of a run that failed worth keeping: a checkpoint to resume from, or
results to read."""


def discard_unstarted(path: Path) -> None:
    """Remove the folder of a run that failed before it had anything of `KEPT_AFTER_FAILURE`:
    it holds only what the run started with (its marker and config.yaml, maybe caches and a
    tracker's first records), which `--resume` would only start again from scratch, and it
    would keep its `name` taken. Marking it failed instead would leave folders that every
    reader of runs (`report`, `compare`) must learn to skip."""
    if not any(os.path.lexists(path / name) for name in KEPT_AFTER_FAILURE):
        shutil.rmtree(path, ignore_errors=True)


def check_before_launch(config: Config, processes: int) -> None:
    """What `train` checks before it makes a run folder, short of building the model: run by
    the launching process of `tsuika train --processes N`, so that a mistake in the config or
    the data is said once, before N workers each say it and torchrun adds its own report."""
    if config.method != "auto":
        config = method_class(config.method).configured(config)
    check_tracking(config)
    check_sharding(config, processes)
    check_run_dir(config.output, config.name)
    model_kind = model_kind_for(config)
    task = task_for(config)
    # Without read_data's warnings: the main worker says them when it reads the data again.
    splits = load_splits(config.data, model_kind, task.columns, task)
    task.handle_imbalance(config.train.balance, splits.train)
    if config.method != "auto":
        method_class(config.method)(config, task)  # a method that cannot train this task


def validation_given_back(
    config: Config, task: Task, method: Method, model: AdaptableModel, splits: Splits
) -> Splits:
    """`splits` with a validation split that nothing selects on joined to training
    (`data.give_back`): held out of the training file, of a task with a new head, not a
    few-shot experiment (`data.k`: training is then k per class, whatever validation holds).
    The same decision on resuming, from the same config."""
    data = config.data
    if not data.give_back or data.validation or data.k or not task.new_head or not splits.val:
        return splits
    why = method.unused_validation(model)
    return splits if why is None else splits.with_validation_given_back(why)


def with_train(config: Config, **values: Any) -> Config:
    """`config` with some `train.*` values replaced (what a run decided from its data)."""
    return config.model_copy(update={"train": config.train.model_copy(update=values)})


def line_of(key: str, note: Any) -> str:
    """A note of the run's start, as the one line the console shows."""
    if key == "recipe":
        return f"method auto → {note['method']}: {note['reason']}"
    if key == "estimate":
        return f"estimated time: {note['words']}, done about {note['eta']}"
    return str(note)


HEADROOM = 0.9
"""A recipe plans its run to this share of `train.budget_minutes`: measured runs took 0.75 to
1.11 times their estimate (bench/real_data.py --part cost, 2026-12-06; not counted: the
optimizer's updates and the classical baselines)."""


def budgeted(
    config: Config,
    task: Task,
    splits: Splits,
    method: Method,
    model: AdaptableModel,
    chosen: bool,
    started: float,
) -> tuple[Config, Method, AdaptableModel, dict[str, Any]]:
    """The run's estimated wall time (`tsuika.methods.cost`, plus what it has spent since
    `started`: loading, reading, measuring) and, for a recipe (`chosen`), what it gives up
    to plan within `HEADROOM` of `train.budget_minutes`: fewer epochs, then a head on frozen
    features (`transfer`) when one epoch alone is too much."""
    budget = config.train.budget_minutes
    trains_from = None if head_only(method, model) else method.cache_boundary(model)
    speed = measure_speed(model, splits, config, trains_from)
    examples = method.epoch_examples(len(splits.train))
    found, cuts = estimate(config, splits, speed, examples), []
    spent = time.perf_counter() - started
    room = None if budget is None else budget * 60 * HEADROOM - spent
    if chosen and room is not None and found.seconds > room:
        epochs = epochs_within(config, splits, speed, examples, room)
        if epochs < config.train.epochs:
            cuts.append(
                f"{config.train.epochs} → {epochs} epochs to stay within "
                f"train.budget_minutes={budget:g} (estimated {duration(spent + found.seconds)})"
            )
            config = with_train(config, epochs=epochs)
            found = estimate(config, splits, speed, examples)
        if found.seconds > room:
            cuts.append(
                f"{config.method} would take {duration(spent + found.seconds)} even for one "
                "epoch: transfer (a head on frozen features) instead"
            )
            config = config.model_copy(update={"method": "transfer"})
            method, model = adapting(config, task)
            # The same network, its head alone training: the forward speed is already known.
            examples = method.epoch_examples(len(splits.train))
            found = estimate(config, splits, Speed(speed.forward), examples)
    finish = time.localtime(time.time() + found.seconds)
    found.seconds += time.perf_counter() - started  # the whole run's, as it will be measured
    note = {
        "seconds": found.seconds,
        "forward_seconds_per_example": found.speed.forward,
        "step_seconds_per_example": found.speed.step,
        "words": found.words(),
        "eta": time.strftime("%H:%M", finish),
        "cuts": cuts,
    }
    return config, method, model, note


def adapting(config: Config, task: Task) -> tuple[Method, AdaptableModel]:
    """The config's method and the model it adapts, on the training device and prepared."""
    method = method_class(config.method)(config, task)
    model = method.build_model(config)
    model.to(training_device())  # precompute on the accelerator too, not only train there
    method.prepare(model)  # once, on the device
    return method, model


def data_warnings(splits: Splits, task: Task) -> list[Finding]:
    """The data checks that need no model (`tsuika check` runs them all), each finding
    beyond `ok` said as a warning."""
    findings = data_checks(splits, task)
    for finding in findings:
        if finding.verdict != "ok":
            fix = f"; fix: {finding.fix}" if finding.fix else ""
            warn(f"data check, {finding.check}: {finding.text}{fix}")
    return findings


def task_and_data(config: Config) -> tuple[Task, Splits]:
    """The task a config names and its data, read and split (what `train` starts from)."""
    model_kind = model_kind_for(config)
    task = task_for(config)
    return task, read_data(config, model_kind, task)


def read_data(config: Config, model_kind: str, task: Task) -> Splits:
    splits = load_splits(config.data, model_kind, task.columns, task)
    if splits.skipped:
        shown = "\n  ".join(splits.skipped[:10])
        more = f"\n  … and {len(splits.skipped) - 10} more" if len(splits.skipped) > 10 else ""
        warn(
            f"skipped {len(splits.skipped)} file(s) (data.strict=true makes this an error):"
            f"\n  {shown}{more}"
        )
    return splits


@contextlib.contextmanager
def tracked(config: Config, path: Path, resuming: bool) -> Iterator[Tracker | None]:
    """The run's tracker (main process only); a run stopped by an error or Ctrl-C is
    recorded as failed or killed there before the exception goes on."""
    tracker = open_tracker(config, path, resuming) if is_main_process() else None
    try:
        yield tracker
    except BaseException as error:
        if tracker is not None:
            tracker.fail(interrupted=isinstance(error, KeyboardInterrupt))
        raise


def disk_usage(folder: Path) -> dict[str, int]:
    """Bytes of the saved model (what the method wrote: trained groups, or an adapter) and,
    for adapters, of the PEFT folder alone."""

    def size(root: Path) -> int:
        return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())

    usage = {"model_bytes": size(folder)} if folder.is_dir() else {}
    if (folder / "adapter").is_dir():
        usage["adapter_bytes"] = size(folder / "adapter")
    return usage


def peak_memory() -> dict[str, float]:
    """The process's peak resident memory so far (MB; on Linux `ru_maxrss` is in kB), and the
    accelerator's peak allocation when there is one."""
    import resource

    import torch

    memory = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        memory["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return memory


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
    refuse_links_in(path)  # the run appends and writes there again: never through a link
    return load_config(path / "config.yaml")
