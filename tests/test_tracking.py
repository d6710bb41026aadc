"""Experiment tracking (`track: tensorboard | mlflow`): what is logged is read back from the
stores themselves (TensorBoard event files, the MLflow SQLite store) and compared with the
records, the config and the summary; resumed runs continue their tracker run; the caller's
MLflow settings are left alone and nothing reaches the network; a missing package is a
one-line error."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest
from helpers import fast_config
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

import tsuika
from tsuika.cli import main
from tsuika.config import Config, build_config
from tsuika.errors import TsuikaError
from tsuika.train.loop import Loop
from tsuika.train.tracking import check_tracking, open_tracker

RECORDS = [
    ("transfer", {"epoch": 1, "step": 4, "train_loss": 0.9, "val_accuracy": 0.5, "lr": 0.01}),
    ("transfer", {"epoch": 2, "step": 8, "train_loss": 0.6, "val_accuracy": 0.75, "events": []}),
    ("scratch", {"epoch": 1, "train_loss": 0.7, "val_accuracy": 0.25, "val_accuracy/topic": 0.5}),
    ("transfer", {"epoch": 3, "step": 12, "train_loss": 0.5, "val_accuracy": 1.0, "lr": 0.0}),
]
SUMMARY = {
    "run": "runs/r",
    "test": {"accuracy": 0.875, "macro_f1": 0.8, "accuracy/price ($)": 0.7},
    "training": {"epochs_run": 3, "stopped_early": False, "trained_groups": ["head"]},
    "gain": {"baseline": "scratch", "gain": 0.125, "low": -0.25, "high": 0.5},
    "verdicts": {
        "overfitting": {"overfitting": False, "text": "validation peaked at epoch 3 of 3"},
        "transfer": {"negative_transfer": False, "text": "transfer beats scratch by 12.5 points"},
    },
}
SUMMARY_NUMBERS = {  # SUMMARY's numbers by path; booleans, strings and lists are not metrics
    "summary/test/accuracy": 0.875,
    "summary/test/macro_f1": 0.8,
    "summary/test/accuracy/price ___": 0.7,  # characters MLflow refuses in names become _
    "summary/training/epochs_run": 3.0,
    "summary/gain/gain": 0.125,
    "summary/gain/low": -0.25,
    "summary/gain/high": 0.5,
}
VERDICTS = {name: verdict["text"] for name, verdict in SUMMARY["verdicts"].items()}


def _config(tmp_path: Path, track: str, **values: Any) -> Config:
    return build_config({"track": track, "output": str(tmp_path / "runs"), **values})


@pytest.fixture(scope="session")
def mlflow_tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store: MLflow takes over a second to create its tables, so most
    tests start from a copy (test_mlflow_logs_config_epochs_summary_and_files does not)."""
    path = tmp_path_factory.mktemp("mlflow-tables") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_store(tmp_path: Path, mlflow_tables: Path) -> Path:
    """`tmp_path/runs` (the output of `_config` and of the whole runs below) with a store."""
    output = tmp_path / "runs"
    (output / "mlruns").mkdir(parents=True)
    shutil.copyfile(mlflow_tables, output / "mlruns" / "mlflow.db")
    return output


def _run_folder(config: Config, name: str = "r") -> Path:
    path = Path(config.output) / name
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(SUMMARY, indent=2), encoding="utf-8")
    (path / "config.yaml").write_text("track: x\n", encoding="utf-8")
    return path


def _expected_epochs(records: list[tuple[str, dict]]) -> dict[str, list[tuple[int, float]]]:
    """Every number of every record as `<phase>/<key>` → [(epoch, value), ...]."""
    expected: dict[str, list[tuple[int, float]]] = {}
    for phase, record in records:
        for key, value in record.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                expected.setdefault(f"{phase}/{key}", []).append((record["epoch"], value))
    return expected


def _jsonl_records(run_path: Path) -> list[tuple[str, dict]]:
    lines = (run_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [(r.pop("phase"), r) for r in map(json.loads, lines)]


def _number_leaves(tree: dict, prefix: str = "summary") -> dict[str, float]:
    leaves = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            leaves.update(_number_leaves(value, f"{prefix}/{key}"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            leaves[f"{prefix}/{key}"] = value
    return leaves


# -- reading the stores back --------------------------------------------------------------------


def _tensorboard(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def _tb_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    events = _tensorboard(folder)
    return {
        tag: [(s.step, s.value) for s in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def _tb_texts(folder: Path) -> dict[str, list[tuple[int, str]]]:
    events = _tensorboard(folder)
    return {
        tag.removesuffix("/text_summary"): [
            (e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode()) for e in texts
        ]
        for tag in events.Tags()["tensors"]
        for texts in [events.Tensors(tag)]
    }


def _tb_hparams(folder: Path) -> list[dict[str, Any]]:
    """The hyperparameters of every hparams session under `folder` (one per logged config)."""
    sessions = []
    for file in sorted(folder.glob("*/events.out.tfevents.*")):
        content = _tensorboard(file).PluginTagToContent("hparams")
        data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hparams = data.session_start_info.hparams
        sessions.append({k: getattr(v, v.WhichOneof("kind")) for k, v in hparams.items()})
    return sessions


def _mlflow_runs(output: Path) -> tuple[MlflowClient, list]:
    client = MlflowClient(tracking_uri=f"sqlite:///{(output / 'mlruns' / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("tsuika")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])
    return client, runs


def _mlflow_history(client: MlflowClient, run_id: str, keys) -> dict[str, list]:
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        for key in keys
    }


# -- the trackers on their own ------------------------------------------------------------------


def test_tensorboard_logs_config_epochs_summary_and_files(tmp_path: Path) -> None:
    config = _config(tmp_path, "tensorboard", finetune={"group_lr": {"block[1-3]": 0.1}})
    path = _run_folder(config)
    tracker = open_tracker(config, path, resuming=False)
    for phase, record in RECORDS:
        tracker.log(phase, record)
    tracker.log("transfer", {"epoch": 4, "val_accuracy": 0.5, "events": ["unfroze block3"]})
    tracker.finish(SUMMARY, [path / "summary.json", path / "config.yaml", path / "report.html"])

    scalars = _tb_scalars(path / "tensorboard")
    expected = _expected_epochs([*RECORDS, ("transfer", {"epoch": 4, "val_accuracy": 0.5})])
    epochs = {tag: points for tag, points in scalars.items() if not tag.startswith("summary/")}
    assert epochs.keys() == expected.keys()
    for tag, points in expected.items():  # event files hold float32
        assert epochs[tag] == [(step, pytest.approx(value, rel=1e-6)) for step, value in points]
    summary = {tag: points for tag, points in scalars.items() if tag.startswith("summary/")}
    assert summary == {k: [(0, pytest.approx(v, rel=1e-6))] for k, v in SUMMARY_NUMBERS.items()}

    texts = _tb_texts(path / "tensorboard")
    assert texts["transfer/events"] == [(4, "- unfroze block3")]
    for name, text in VERDICTS.items():
        assert texts[f"summary/verdicts/{name}"] == [(0, text)]
    assert json.loads(texts["files/summary.json"][0][1]) == SUMMARY  # a Markdown code block
    listed = texts["files"][0][1]
    assert f"summary.json: {path / 'summary.json'}" in listed
    assert "report.html" not in listed  # not written, so not claimed

    [hparams] = _tb_hparams(path / "tensorboard")
    assert hparams["train.lr"] == pytest.approx(config.train.lr)
    assert hparams["track"] == "tensorboard"
    assert hparams["data.k"] == "null"
    assert hparams["finetune.group_lr.block_1-3_"] == pytest.approx(0.1)  # [ ] are not allowed


def test_mlflow_logs_config_epochs_summary_and_files(tmp_path: Path) -> None:
    long_path = "x" * 7000  # longer than MLflow allows for a parameter value
    config = _config(tmp_path, "mlflow", data={"train": long_path}, train={"epochs": 7})
    path = _run_folder(config)
    (path / "report.html").write_text("<html></html>", encoding="utf-8")
    tracker = open_tracker(config, path, resuming=False)
    for phase, record in RECORDS:
        tracker.log(phase, record)
    tracker.finish(SUMMARY, [path / "summary.json", path / "config.yaml", path / "report.html"])

    client, [run] = _mlflow_runs(Path(config.output))
    assert run.info.run_name == "r"
    assert run.info.status == "FINISHED"
    assert json.loads((path / "tracking.json").read_text())["mlflow_run_id"] == run.info.run_id
    expected = _expected_epochs(RECORDS)
    assert _mlflow_history(client, run.info.run_id, expected) == expected
    epoch_keys = {key for key in run.data.metrics if not key.startswith("summary/")}
    assert epoch_keys == expected.keys()
    summary = {k: v for k, v in run.data.metrics.items() if k.startswith("summary/")}
    assert summary == SUMMARY_NUMBERS

    params = run.data.params
    assert params["train.epochs"] == "7"
    assert params["track"] == "mlflow"
    assert params["data.k"] == "null"
    assert params["data.label_column"] == "label"
    assert len(params["data.train"]) == 6000
    assert params["data.train"] == "x" * 5999 + "…"
    assert len(params) > 50  # every leaf of the config, not a few

    assert {name: run.data.tags[f"tsuika.verdict.{name}"] for name in VERDICTS} == VERDICTS
    assert run.data.tags["tsuika.run"] == str(path.resolve())
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert files == {"summary.json", "config.yaml", "report.html"}
    local = Path(client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path)))
    assert json.loads(local.read_text()) == SUMMARY
    assert mlflow.active_run() is None  # ended: the next run starts its own


def test_mlflow_leaves_the_callers_settings_alone_and_stays_offline(
    tmp_path: Path, mlflow_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    callers = {
        "MLFLOW_TRACKING_URI": (tmp_path / "callers-store").as_uri(),
        "MLFLOW_EXPERIMENT_NAME": "callers-experiment",
        "MLFLOW_RUN_ID": "0123456789abcdef0123456789abcdef",
    }
    for name, value in callers.items():
        monkeypatch.setenv(name, value)
    for name in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        monkeypatch.delenv(name, raising=False)

    def no_network(*args: object) -> None:
        raise AssertionError(f"tried to reach the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    # MLflow 3's telemetry (mlflow.telemetry) switches itself off under pytest: undo that and
    # give it a client that keeps the records it would send (its internals, as of MLflow 3.17).
    telemetry: list[object] = []

    class Client:
        config = None  # not fetched yet: MLflow records every event

        def add_record(self, record: object) -> None:
            telemetry.append(record)

    monkeypatch.setattr("mlflow.telemetry.utils._IS_IN_CI_ENV_OR_TESTING", False)
    monkeypatch.setattr("mlflow.telemetry.track.get_telemetry_client", Client)

    config = _config(tmp_path, "mlflow")
    path = _run_folder(config)
    tracker = open_tracker(config, path, resuming=False)
    assert {name: os.environ.get(name) for name in callers} == callers
    assert mlflow.get_tracking_uri() == callers["MLFLOW_TRACKING_URI"]
    tracker.log(*RECORDS[0])
    tracker.finish(SUMMARY, [path / "summary.json"])

    assert {name: os.environ.get(name) for name in callers} == callers
    assert mlflow.get_tracking_uri() == callers["MLFLOW_TRACKING_URI"]
    assert not (tmp_path / "callers-store").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///elsewhere")
    assert mlflow.get_tracking_uri() == "file:///elsewhere"  # no process-wide URI left behind
    _, [run] = _mlflow_runs(Path(config.output))  # in experiment tsuika, a new run
    assert run.info.run_id != callers["MLFLOW_RUN_ID"]
    assert run.data.metrics["transfer/val_accuracy"] == 0.5
    assert telemetry == []


def test_mlflow_resume_continues_the_same_run(
    tmp_path: Path, mlflow_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = build_config({"track": "mlflow", "output": "runs"})  # relative, as by default
    path = _run_folder(config).resolve()
    first = open_tracker(config, path, resuming=False)
    first.log(*RECORDS[0])
    first.log(*RECORDS[1])
    # The process "crashed" here: the tracker was never finished. It is resumed from elsewhere.
    monkeypatch.chdir(path)
    resumed = open_tracker(config, path, resuming=True)
    resumed.log(*RECORDS[3])
    resumed.finish(SUMMARY, [path / "summary.json"])

    client, [run] = _mlflow_runs(mlflow_store)  # one MLflow run, continued
    assert run.info.status == "FINISHED"
    expected = _expected_epochs([RECORDS[0], RECORDS[1], RECORDS[3]])
    assert _mlflow_history(client, run.info.run_id, expected) == expected
    assert run.data.params["track"] == "mlflow"


def test_a_resumed_run_whose_mlflow_run_is_gone_starts_a_new_one(
    tmp_path: Path, mlflow_store: Path
) -> None:
    config = _config(tmp_path, "mlflow")
    path = _run_folder(config)
    (path / "tracking.json").write_text(json.dumps({"mlflow_run_id": "f" * 32}))
    tracker = open_tracker(config, path, resuming=True)
    tracker.log(*RECORDS[0])
    tracker.finish(SUMMARY, [])

    _, [run] = _mlflow_runs(Path(config.output))
    assert json.loads((path / "tracking.json").read_text())["mlflow_run_id"] == run.info.run_id
    assert run.data.params["track"] == "mlflow"  # a new run gets the config


def test_tensorboard_resume_appends_to_the_same_folder(tmp_path: Path) -> None:
    config = _config(tmp_path, "tensorboard")
    path = _run_folder(config)
    first = open_tracker(config, path, resuming=False)
    first.log(*RECORDS[0])
    first.fail(interrupted=True)
    resumed = open_tracker(config, path, resuming=True)
    resumed.log(*RECORDS[1])
    resumed.finish(SUMMARY, [])

    scalars = _tb_scalars(path / "tensorboard")
    assert scalars["transfer/val_accuracy"] == [(1, 0.5), (2, 0.75)]
    assert len(_tb_hparams(path / "tensorboard")) == 1  # the config is logged once


ABANDON = """
import sys
from pathlib import Path
from tsuika.config import build_config
from tsuika.train.tracking import open_tracker

config = build_config({"track": "mlflow", "output": sys.argv[1]})
path = Path(sys.argv[1]) / "r"
path.mkdir(parents=True)
open_tracker(config, path, resuming=False).log("transfer", {"epoch": 1, "val_accuracy": 0.5})
sys.exit(3)  # dies with its MLflow run open
"""


@pytest.mark.slow
def test_a_process_that_dies_mid_run_ends_its_mlflow_run_in_its_own_store(
    tmp_path: Path, mlflow_store: Path
) -> None:
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    output = mlflow_store
    done = subprocess.run(
        [sys.executable, "-c", ABANDON, str(output)], cwd=workdir, capture_output=True, text=True
    )
    assert done.returncode == 3, done.stderr
    _, [run] = _mlflow_runs(output)
    assert run.info.status == "FAILED"
    assert run.data.metrics["transfer/val_accuracy"] == 0.5
    # MLflow's own exit hook would have ended it in the default store, ./mlflow.db
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize(
    ("track", "module"),
    [("tensorboard", "tensorboard"), ("mlflow", "mlflow"), ("mlflow", "sqlalchemy")],
)
def test_a_missing_package_is_a_one_line_error_naming_the_fix(
    track: str,
    module: str,
    tiny_bert_dir: Path,
    tiny_csv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    with pytest.raises(TsuikaError, match=rf"{module}.*pip install 'tsuika\[track\]'"):
        check_tracking(_config(tmp_path, track))

    argv = ["train", "--model", str(tiny_bert_dir), "--data", str(tiny_csv)]
    argv += [f"output={tmp_path / 'runs'}", "progress=false", "train.epochs=1", f"track={track}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: track: ")
    assert "pip install 'tsuika[track]'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # refused before any run folder was made


def test_no_tracking_opens_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path, "none")
    assert open_tracker(config, _run_folder(config), resuming=False) is None


# -- whole runs ---------------------------------------------------------------------------------


def test_a_tensorboard_run_holds_every_line_of_its_metrics_file(
    tiny_bert_dir: Path, tiny_csv: Path, tmp_path: Path
) -> None:
    config = fast_config(tiny_bert_dir, tiny_csv, tmp_path / "runs", name="tb", track="tensorboard")
    config["baselines"] |= {"scratch": True, "scratch_epochs": 2}  # a second phase
    run = tsuika.train(config)

    records = _jsonl_records(run.path)
    assert {phase for phase, _ in records} == {"transfer", "scratch"}
    scalars = _tb_scalars(run.path / "tensorboard")
    expected = _expected_epochs(records)
    epochs = {tag: points for tag, points in scalars.items() if not tag.startswith("summary/")}
    assert epochs.keys() == expected.keys()
    for tag, points in expected.items():
        assert epochs[tag] == [(step, pytest.approx(value, rel=1e-6)) for step, value in points]
    summary = {tag: points[0][1] for tag, points in scalars.items() if tag.startswith("summary/")}
    assert summary == {
        k: pytest.approx(v, rel=1e-6) for k, v in _number_leaves(run.summary).items()
    }
    texts = _tb_texts(run.path / "tensorboard")
    verdicts = {name: verdict["text"] for name, verdict in run.summary["verdicts"].items()}
    assert {name: texts[f"summary/verdicts/{name}"][0][1] for name in verdicts} == verdicts


def test_mlflow_runs_hold_every_line_of_their_metrics_files(
    tiny_bert_dir: Path, tiny_csv: Path, mlflow_store: Path
) -> None:
    output = mlflow_store
    first = tsuika.train(fast_config(tiny_bert_dir, tiny_csv, output, name="a", track="mlflow"))
    second = tsuika.train(fast_config(tiny_bert_dir, tiny_csv, output, name="b", track="mlflow"))

    client, runs = _mlflow_runs(output)
    assert [(r.info.run_name, r.info.status) for r in runs] == [
        ("a", "FINISHED"),
        ("b", "FINISHED"),
    ]
    for run, mlflow_run in zip([first, second], runs, strict=True):
        expected = _expected_epochs(_jsonl_records(run.path))
        assert _mlflow_history(client, mlflow_run.info.run_id, expected) == expected
        summary = {k: v for k, v in mlflow_run.data.metrics.items() if k.startswith("summary/")}
        assert summary == _number_leaves(run.summary)
        assert mlflow_run.data.params["train.epochs"] == "5"
        files = {a.path for a in client.list_artifacts(mlflow_run.info.run_id)}
        assert {"summary.json", "config.yaml"} <= files


def test_a_run_resumed_after_ctrl_c_continues_its_mlflow_run(
    tiny_bert_dir: Path, tiny_csv: Path, mlflow_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = mlflow_store
    config = fast_config(tiny_bert_dir, tiny_csv, output, name="r", track="mlflow")
    calls = {"n": 0}
    step = Loop._optimizer_step

    def interrupted_after_six(self: Loop) -> None:  # 4 steps an epoch: stops in epoch 2
        calls["n"] += 1
        if calls["n"] > 6:
            raise KeyboardInterrupt
        step(self)

    monkeypatch.setattr(Loop, "_optimizer_step", interrupted_after_six)
    with pytest.raises(KeyboardInterrupt):
        tsuika.train(config)
    monkeypatch.setattr(Loop, "_optimizer_step", step)
    client, [interrupted] = _mlflow_runs(output)
    assert interrupted.data.metrics["transfer/epoch"] == 1

    run = tsuika.train(resume=output / "r")
    client, [continued] = _mlflow_runs(output)
    assert continued.info.run_id == interrupted.info.run_id
    assert continued.info.status == "FINISHED"
    expected = _expected_epochs(_jsonl_records(run.path))
    assert [step for step, _ in expected["transfer/val_accuracy"]] == [1, 2, 3, 4, 5]
    assert _mlflow_history(client, continued.info.run_id, expected) == expected
