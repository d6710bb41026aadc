"""Experiment tracking (`track: tensorboard | mlflow`) through Accelerate's trackers, in local
stores only: nothing is sent over the network.

What a run logs: the resolved config as hyperparameters (dotted keys, `train.lr`), every number
of every epoch record as `<phase>/<key>` at step = epoch (`transfer/val_accuracy`), the
summary's numbers as `summary/<path>` (`summary/test/accuracy`, `summary/gain/gain`), the
verdicts as text, and the run's files (summary.json, config.yaml, report.html).

- **TensorBoard**: event files in `<run>/tensorboard/` (`tensorboard --logdir runs`). It has no
  artifacts, so the text files (summary.json, config.yaml) are logged as text and every file's
  path is listed in a `files` text.
- **MLflow**: experiment `tsuika`, one MLflow run per tsuika run, named after its folder, in a
  **SQLite** store `<output>/mlruns/mlflow.db` with the artifacts in `<output>/mlruns/artifacts/`
  (see them with the full `mlflow` package: `mlflow ui --backend-store-uri
  sqlite:///<output>/mlruns/mlflow.db`). Why not a `file:` store: MLflow 3 put it in
  maintenance mode and (3.17) refuses to open one unless `MLFLOW_ALLOW_FILE_STORE=true`;
  SQLite is its default, supported local backend. mlflow-skinny ships the SQL store but not
  SQLAlchemy and Alembic, so the `track` extra adds both. A new store costs about 1.5 s once
  (MLflow creates its tables).

MLflow keeps its settings in process globals and environment variables; every MLflow call here
runs inside `_mlflow_scope`, which points them at tsuika's store (telemetry off, no stray
`MLFLOW_RUN_ID` or experiment name from the caller) and restores them afterwards, so the calling
program's own MLflow use is left as it was.

Resume (`tsuika train --resume RUN`): TensorBoard appends to the same folder; MLflow continues
the run whose id `<run>/tracking.json` holds.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import json
import numbers
import os
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from tsuika.config import Config
from tsuika.console import warn
from tsuika.errors import TsuikaError
from tsuika.files import write_atomic
from tsuika.train.distributed import training_device

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

EXPERIMENT = "tsuika"
STORE, DATABASE = "mlruns", "mlflow.db"
"""MLflow's store: `<output>/mlruns/mlflow.db`, beside the run folders."""
SQLITE_HEADER = b"SQLite format 3\x00"
TRACKING_FILE = "tracking.json"
"""In the run folder: the MLflow run id, so that a resumed run continues the same MLflow run."""
PACKAGES = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow", "sqlalchemy", "alembic")}
TEXT_SUFFIXES = {".json", ".yaml", ".yml", ".txt", ".md"}

MLFLOW_ENV: dict[str, str | None] = {
    # MLflow 3 sends usage telemetry unless told not to; nothing may leave the machine.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # Its system-metrics thread would log while the caller's tracking URI is back in place.
    "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
    # Accelerate and MLflow let these override the experiment, the run id and nesting.
    "MLFLOW_EXPERIMENT_NAME": None,
    "MLFLOW_RUN_ID": None,
    "MLFLOW_TAGS": None,
    "MLFLOW_NESTED_RUN": None,
}

_open_mlflow_runs: dict[str, str] = {}
"""Run id → tracking URI of the MLflow runs this process started and has not ended yet."""


class Tracker:
    """One run's tracker: the config at the start, every epoch record, the summary and the
    run's files (report, summary) as artifacts at the end."""

    def __init__(self, backend: Any, new: bool) -> None:
        self.backend = backend
        """The Accelerate tracker (`accelerate.tracking.GeneralTracker`)."""
        self.new = new
        """The tracker run was created now (not continued): its config is still to be logged."""
        self.ended = False

    def _scope(self) -> AbstractContextManager[None]:
        return nullcontext()

    def log_config(self, params: dict[str, Any]) -> None:
        with self._scope():
            self.backend.store_init_configuration(params)

    def log(self, phase: str, record: dict) -> None:
        """One epoch record of a phase (`metrics.jsonl` line without `phase`)."""
        with self._scope():
            self.backend.log(self._epoch_values(phase, record), step=int(record["epoch"]))

    def _epoch_values(self, phase: str, record: dict) -> dict[str, Any]:
        return {
            f"{phase}/{name_part(key)}": float(value)
            for key, value in record.items()
            if is_number(value)
        }

    def finish(self, summary: dict, artifacts: list[Path]) -> None:
        """The summary's numbers, its verdicts and the files that exist; then the end."""
        files = [path for path in artifacts if path.is_file()]
        with self._scope():
            self.backend.log(number_leaves(summary, "summary"))
            self._log_verdicts(verdict_texts(summary))
            self._log_files(files)
            self._end("FINISHED")

    def fail(self, interrupted: bool = False) -> None:
        """End the tracker run of a run that stopped early (an error, or Ctrl-C)."""
        with self._scope():
            self._end("KILLED" if interrupted else "FAILED")

    def _log_verdicts(self, texts: dict[str, str]) -> None:
        raise NotImplementedError

    def _log_files(self, files: list[Path]) -> None:
        raise NotImplementedError

    def _end(self, status: str) -> None:
        if not self.ended:
            self.backend.finish()
            self.ended = True


class TensorBoardRun(Tracker):
    """Event files in `<run>/tensorboard/`; a resumed run appends a new event file there."""

    def __init__(self, run_path: Path, resuming: bool) -> None:
        from accelerate.tracking import TensorBoardTracker

        backend = TensorBoardTracker("tensorboard", run_path)  # writes to <run>/tensorboard
        backend.main_process_only = False  # api.py opens trackers in the main process only
        backend.start()
        super().__init__(backend, new=not resuming)

    def _epoch_values(self, phase: str, record: dict) -> dict[str, Any]:
        values = super()._epoch_values(phase, record)
        if record.get("events"):
            values[f"{phase}/events"] = "\n".join(f"- {event}" for event in record["events"])
        return values

    def _log_verdicts(self, texts: dict[str, str]) -> None:
        self.backend.log({f"summary/verdicts/{name_part(k)}": text for k, text in texts.items()})

    def _log_files(self, files: list[Path]) -> None:
        # TensorBoard has no artifacts: the text files as text (indented: a Markdown code
        # block), and where every file lies.
        texts = {
            f"files/{name_part(path.name)}": indent(path.read_text(encoding="utf-8"))
            for path in files
            if path.suffix in TEXT_SUFFIXES
        }
        if files:
            texts["files"] = "\n".join(f"- {path.name}: {path.resolve()}" for path in files)
        self.backend.log(texts)


class MLflowRun(Tracker):
    """One MLflow run in the SQLite store `<output>/mlruns/mlflow.db`; its id is kept in
    `<run>/tracking.json`, and a resumed run continues it."""

    def __init__(self, store: Path, run_path: Path, resuming: bool) -> None:
        store.mkdir(parents=True, exist_ok=True)
        self.uri = f"sqlite:///{(store / DATABASE).resolve().as_posix()}"
        self.artifacts = (store / "artifacts").resolve().as_uri()
        with _store_lock(store), _store_errors(store / DATABASE):
            known = self._continued_run_id(run_path) if resuming else None
            with self._scope():
                backend = self._start(run_path, known)
        self.run_id: str = backend.active_run.info.run_id
        _open_mlflow_runs[self.run_id] = self.uri
        if known is None:
            write_atomic(run_path / TRACKING_FILE, json.dumps({"mlflow_run_id": self.run_id}))
        super().__init__(backend, new=known is None)

    def _scope(self) -> AbstractContextManager[None]:
        return _mlflow_scope(self.uri)

    def _start(self, run_path: Path, run_id: str | None) -> Any:
        import mlflow
        from accelerate.tracking import MLflowTracker

        _register_exit_hook()
        end_abandoned_runs("FAILED")  # a previous run of this process that raised
        if mlflow.active_run() is not None:
            raise TsuikaError(
                f"an MLflow run ({mlflow.active_run().info.run_id}) is already active in this "
                "process; end it (mlflow.end_run()) before training with track: mlflow"
            )
        backend = MLflowTracker(
            experiment_name=EXPERIMENT,
            logging_dir=self.artifacts,
            run_id=run_id,
            run_name=run_path.name,
        )
        backend.main_process_only = False  # api.py opens trackers in the main process only
        backend.start()
        mlflow.set_tag("tsuika.run", str(run_path.resolve()))  # where the run's files are
        return backend

    def _continued_run_id(self, run_path: Path) -> str | None:
        """The MLflow run of the interrupted run, or None when there is none to continue."""
        try:
            run_id = json.loads((run_path / TRACKING_FILE).read_text())["mlflow_run_id"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # stopped before its MLflow run was created
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            with self._scope():
                run = MlflowClient(tracking_uri=self.uri).get_run(run_id)
        except MlflowException:
            run = None
        if run is None or run.info.lifecycle_stage != "active":
            warn(f"MLflow run {run_id} is not in {self.uri}; the resumed run starts a new one")
            return None
        return run_id

    def log_config(self, params: dict[str, Any]) -> None:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        # MLflow refuses longer values (Accelerate would drop them): keep their start instead.
        super().log_config({k: truncate(v, MAX_PARAM_VAL_LENGTH) for k, v in params.items()})

    def _log_verdicts(self, texts: dict[str, str]) -> None:
        import mlflow

        tags = {f"tsuika.verdict.{name_part(name)}": text for name, text in texts.items()}
        if texts:  # shown as the run's description in the MLflow UI
            tags["mlflow.note.content"] = "\n\n".join(texts.values())
        mlflow.set_tags(tags)

    def _log_files(self, files: list[Path]) -> None:
        for path in files:
            self.backend.log_artifact(str(path))

    def _end(self, status: str) -> None:
        if not self.ended:
            _end_mlflow_run(self.run_id, status)
        super()._end(status)


def check_tracking(config: Config, output: Path | None = None) -> None:
    """Raise TsuikaError when `config.track` needs a package that is not installed, or for
    MLflow when `<output>/mlruns` (`output`: default `config.output`) cannot be its store:
    call it before the run folder is created."""
    if config.track == "none":
        return
    missing = [name for name in PACKAGES[config.track] if not importable(name)]
    if missing:
        raise TsuikaError(
            f"track: {config.track} needs {', '.join(missing)} (not installed): "
            "pip install 'tsuika[track]'"
        )
    if config.track == "mlflow":
        check_mlflow_store(Path(config.output if output is None else output) / STORE)


def check_mlflow_store(store: Path) -> None:
    """The MLflow store is a folder holding an SQLite database, or is not there yet."""
    database = store / DATABASE
    if os.path.lexists(store) and not store.is_dir():
        problem = f"{store} is not a folder"
    elif os.path.lexists(database) and not database.is_file():
        problem = f"{database} is not a file"
    elif database.is_file() and not _sqlite_or_empty(database):
        problem = f"{database} is not an SQLite database"
    else:
        return
    raise TsuikaError(
        f"track: mlflow keeps its store in {store}, and {problem}; move it away or choose "
        "another `output`"
    )


def _sqlite_or_empty(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except OSError:
        return False
    return header in (b"", SQLITE_HEADER)  # SQLite takes an empty file as a new database


def open_tracker(config: Config, run_path: Path, resuming: bool) -> Tracker | None:
    """The tracker `config.track` names, or None for `none`."""
    if config.track == "none":
        return None
    check_tracking(config)
    training_device()  # Accelerate's trackers log through its logger, which needs its state
    tracker: Tracker
    if config.track == "tensorboard":
        tracker = TensorBoardRun(run_path, resuming)
    else:
        # `<output>/mlruns`, found from the run folder: `config.output` may be relative to
        # another working directory than the one a run is resumed from.
        tracker = MLflowRun(run_path.parent / STORE, run_path, resuming)
    if tracker.new:
        tracker.log_config(flat_params(config.model_dump(mode="json")))
    return tracker


def importable(module: str) -> bool:
    try:
        # Importing mlflow starts its telemetry client unless this is set at that moment.
        with _environment({"MLFLOW_DISABLE_TELEMETRY": "true"}):
            importlib.import_module(module)
    except ImportError:
        return False
    return True


# -- names and values ---------------------------------------------------------------------------

_NOT_IN_NAMES = re.compile(r"[^A-Za-z0-9_\-. ]")


def name_part(key: object) -> str:
    """`key` as part of a metric or parameter name. MLflow allows only letters, digits, `_-. `
    and `/` between parts; label columns (`val_accuracy/<column>`) and group patterns may hold
    anything. Empty, `.` and `..` parts would make a path that MLflow refuses."""
    parts = (_NOT_IN_NAMES.sub("_", part) for part in str(key).split("/"))
    return "/".join(part if part.strip(".") else "_" for part in parts)


def is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def flat_params(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (`train.lr`); lists, None and empty dicts as JSON text."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = prefix + name_part(key)
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, name + "."))
        elif isinstance(value, str | bool | int | float):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def number_leaves(tree: dict, prefix: str) -> dict[str, float]:
    """The numbers of a nested dict by path (`summary/test/accuracy`); lists are skipped."""
    leaves: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}/{name_part(key)}"
        if isinstance(value, dict):
            leaves.update(number_leaves(value, name))
        elif is_number(value):
            leaves[name] = float(value)
    return leaves


def verdict_texts(summary: dict) -> dict[str, str]:
    verdicts = summary.get("verdicts") or {}
    return {
        name: verdict["text"]
        for name, verdict in verdicts.items()
        if isinstance(verdict, dict) and isinstance(verdict.get("text"), str)
    }


def truncate(value: Any, limit: int) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[: limit - 1] + "…"
    return value


def indent(text: str) -> str:
    return "".join(f"    {line}" for line in text.splitlines(keepends=True))


# -- MLflow's process-wide state ----------------------------------------------------------------


@contextmanager
def _environment(changes: dict[str, str | None]) -> Iterator[None]:
    """Environment variables set (or removed, for None) inside the block, restored after."""
    saved = {name: os.environ.get(name) for name in changes}
    try:
        _set_environment(changes)
        yield
    finally:
        _set_environment(saved)


def _set_environment(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextmanager
def _mlflow_scope(uri: str) -> Iterator[None]:
    """MLflow's tracking URI (a process global and an environment variable) and the variables
    of MLFLOW_ENV set for tsuika's store inside the block; the caller's restored after."""
    import mlflow

    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    if previous == os.environ.get("MLFLOW_TRACKING_URI"):
        previous = None  # set by the environment variable alone, which is restored below
    with _environment({**MLFLOW_ENV, "MLFLOW_TRACKING_URI": uri}):
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous)  # None: back to MLflow's default


def _end_mlflow_run(run_id: str, status: str) -> None:
    """End MLflow's active run if it is `run_id` (the fluent API keeps a stack of them)."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(status)
    _open_mlflow_runs.pop(run_id, None)


def end_abandoned_runs(status: str) -> None:
    """End the MLflow runs this process started but never finished (a run that raised), in its
    own store: otherwise the next run could not start, and MLflow's own exit hook would end
    them in the caller's default store (creating ./mlflow.db)."""
    for run_id, uri in reversed(list(_open_mlflow_runs.items())):
        with _mlflow_scope(uri):
            _end_mlflow_run(run_id, status)


@contextmanager
def _store_lock(store: Path) -> Iterator[None]:
    """One process at a time opens the store: two runs that create a new store at once both
    run MLflow's table migrations, and one fails (`duplicate column name: step`, `table …
    already exists`); so do two that create the `tsuika` experiment. An advisory lock on the
    `mlruns` folder itself, so no lock file is left behind; none where `fcntl` is missing
    (Windows)."""
    if fcntl is None:
        yield
        return
    descriptor = os.open(store, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


@contextmanager
def _store_errors(database: Path) -> Iterator[None]:
    """A store MLflow cannot open (another program's SQLite file, one a newer MLflow
    migrated) as one error naming it: the file is the user's to move, not a bug."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (MlflowException, SQLAlchemyError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TsuikaError(
            f"track: mlflow cannot open its store {database} ({reason}); move it away or "
            "choose another `output`"
        ) from None


@functools.cache
def _register_exit_hook() -> None:
    # Registered after `import mlflow`, so it runs before MLflow's own exit hook (LIFO).
    atexit.register(end_abandoned_runs, "FAILED")
