"""Issue 31, items 4, 5, 8 and 11 (and item 9's two `--processes` cases): run folders left
behind by a run that failed, `--processes` mistakes said once before any worker starts, empty
paths refused everywhere, and `plan` checking what its final run needs before it spends the
budget (and a Ctrl-C in it said without Optuna's traceback).

Every mistake here must end as one message with exit code 2 (130 for Ctrl-C), and leave no
run folder behind unless it holds something worth keeping.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import run_folders
from PIL import Image

import tsuika
import tsuika.api
from tsuika.cli import main
from tsuika.config import load_config
from tsuika.errors import RunInterrupted, TsuikaError


def _one_error(capsys: pytest.CaptureFixture[str], *names: str) -> str:
    """The command's stderr: one `error:` line without a traceback, naming each of `names`."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: "), err
    for name in names:
        assert name in err, (name, err)
    return err


def _usage_error(capsys: pytest.CaptureFixture[str], option: str) -> str:
    """A usage error of the command line: click's message naming the option."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"Invalid value for '{option}': is empty" in err, err
    return err


def _args(config: dict[str, Any]) -> list[str]:
    """A config dict as `key=value` arguments (sections as dotted keys)."""
    pairs = []
    for key, value in config.items():
        if isinstance(value, dict):
            pairs += _args({f"{key}.{k}": v for k, v in value.items()})
        else:
            pairs.append(
                f"{key}={json.dumps(value) if value is None or isinstance(value, bool) else value}"
            )
    return pairs


# -- item 4: a failed run leaves no folder behind ------------------------------------------------


def _distill(tiny_run: tsuika.Run, tiny_csv: Path, output: Path, unlabelled: Path) -> int:
    return main(
        [
            "distill",
            "--teacher",
            str(tiny_run.path),
            "--data",
            str(tiny_csv),
            "--unlabelled",
            str(unlabelled),
            "--output",
            str(output),
            "--quiet",
            "train.epochs=1",
            "baselines.scratch=false",
            "report=false",
        ]
    )


@pytest.mark.parametrize(
    "name,content",
    [
        ("missing.csv", None),
        ("empty.csv", ""),
        ("a-folder", "folder"),
        ("wrong.parquet", "\x00\x01PAR1 not a table"),
        ("no-text.csv", "words\ngood film\n"),
    ],
)
def test_a_bad_unlabelled_file_fails_before_the_run_folder(
    name, content, tiny_run, tiny_csv, tmp_path, capsys
):
    unlabelled = tmp_path / name
    if content == "folder":
        unlabelled.mkdir()
    elif content is not None:
        unlabelled.write_text(content, encoding="utf-8")
    output = tmp_path / "runs"
    assert _distill(tiny_run, tiny_csv, output, unlabelled) == 2
    _one_error(capsys, "distill.unlabelled", name)
    assert run_folders(output) == []


CLASSES = ["shoe", "bag", "sneaker"]


@pytest.fixture(scope="module")
def tiny_diffusion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pixel-space diffusion model as a diffusers folder, with a judge."""
    from diffusers import DDIMScheduler

    from tsuika.models.diffusion_parts import (
        noise_scheduler,
        pixel_unet,
        text_encoder,
        word_tokenizer,
    )
    from tsuika.models.judge import ImageJudge
    from tsuika.models.pixel_pipeline import PixelDiffusionPipeline

    folder = tmp_path_factory.mktemp("tiny-diffusion")
    torch.manual_seed(0)
    tokenizer = word_tokenizer(["a", "photo", "of", "shoe", "sks"], max_length=12)
    pipeline = PixelDiffusionPipeline(
        pixel_unet(8, 1, (32, 64), cross_attention_dim=32),
        text_encoder(tokenizer, width=32, layers=2, heads=2),
        tokenizer,
        DDIMScheduler.from_config(noise_scheduler().config),
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    ImageJudge(CLASSES, 8).save(folder / "judge")
    return folder


def _pictures(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _concept_args(model: Path, data: Path, method: str, output: Path) -> list[str]:
    return [
        "train",
        f"model={model}",
        f"method={method}",
        f"data.train={data}",
        "diffusion.class_word=shoe",
        "diffusion.eval_images=2",
        "diffusion.val_images=2",
        "diffusion.sample_steps=2",
        "diffusion.repeats=2",
        "dreambooth.class_images=2",
        "train.epochs=1",
        "train.batch_size=4",
        f"output={output}",
        "progress=false",
    ]


def test_missing_class_data_fails_before_the_run_folder_naming_its_key(
    tiny_diffusion, tmp_path, capsys
):
    data = _pictures(tmp_path / "sneaker")
    output = tmp_path / "runs"
    args = _concept_args(tiny_diffusion, data, "dreambooth", output)
    assert main([*args, f"dreambooth.class_data={tmp_path / 'no-such-folder'}"]) == 2
    err = _one_error(capsys, "no-such-folder", "dreambooth.class_data=")
    assert "data.train" not in err  # the key that named the folder, not another
    assert run_folders(output) == []


def test_a_caption_with_a_lone_surrogate_fails_before_the_run_folder(
    tiny_diffusion, tmp_path, capsys
):
    data = _pictures(tmp_path / "sneaker")
    (data / "metadata.jsonl").write_text(
        '{"file_name": "0.png", "text": "a \\ud800 shoe"}\n', encoding="utf-8"
    )
    output = tmp_path / "runs"
    assert main(_concept_args(tiny_diffusion, data, "textual-inversion", output)) == 2
    _one_error(capsys, "metadata.jsonl", "line 1", "surrogate")
    assert run_folders(output) == []


def _mlflow_args(base_config: dict, output: Path) -> list[str]:
    return ["train", *_args({**base_config, "output": str(output), "track": "mlflow"})]


def test_mlruns_that_is_a_file_fails_before_the_run_folder(base_config, tmp_path, capsys):
    output = tmp_path / "runs"
    output.mkdir()
    (output / "mlruns").write_text("not a folder", encoding="utf-8")
    assert main(_mlflow_args(base_config, output)) == 2
    _one_error(capsys, "mlruns", "not a folder")
    assert run_folders(output) == []


def test_an_mlflow_store_that_is_not_sqlite_fails_before_the_run_folder(
    base_config, tmp_path, capsys
):
    output = tmp_path / "runs"
    (output / "mlruns").mkdir(parents=True)
    (output / "mlruns" / "mlflow.db").write_text("hello, not a database\n", encoding="utf-8")
    assert main(_mlflow_args(base_config, output)) == 2
    _one_error(capsys, "mlflow.db", "not an SQLite database")
    assert [p.name for p in run_folders(output)] == ["mlruns"]


def test_runs_starting_at_once_open_the_mlflow_store_one_at_a_time(tmp_path, monkeypatch):
    """Two runs that create a new store at once both migrate its tables, and one failed with
    `duplicate column name: step` (exit 1): the store is opened under an exclusive lock on
    the `mlruns` folder, which another process would wait for."""
    from tsuika.train import tracking

    store = tmp_path / "mlruns"
    seen: list[bool] = []

    def start(self, run_path, run_id):
        probe = os.open(store, os.O_RDONLY)  # another open file: as another process's
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append(False)
        except BlockingIOError:
            seen.append(True)
        finally:
            os.close(probe)
        raise RuntimeError("stop here")

    monkeypatch.setattr(tracking.MLflowRun, "_start", start)
    with pytest.raises(RuntimeError, match="stop here"):
        tracking.MLflowRun(store, tmp_path / "run", resuming=False)
    assert seen == [True]


def test_a_store_mlflow_cannot_open_is_one_error(tmp_path, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from tsuika.train import tracking

    def start(self, run_path, run_id):
        raise OperationalError("ALTER TABLE metrics", {}, Exception("duplicate column name"))

    monkeypatch.setattr(tracking.MLflowRun, "_start", start)
    with pytest.raises(TsuikaError, match=r"mlflow cannot open its store .*mlflow\.db"):
        tracking.MLflowRun(tmp_path / "mlruns", tmp_path / "run", resuming=False)


@pytest.mark.parametrize("error", [RuntimeError("a bug"), TsuikaError("a late mistake")])
def test_a_run_that_fails_before_it_has_results_removes_its_folder(
    base_config, tmp_path, monkeypatch, error
):
    def failing(training):
        (training.path / "cache").mkdir()  # what a run writes before its first epoch
        raise error

    monkeypatch.setattr(tsuika.api.Training, "fit", failing)
    with pytest.raises(type(error)):
        tsuika.train(base_config, name="failed")
    assert run_folders(tmp_path / "runs") == []


def test_a_failed_run_with_metrics_keeps_its_folder(base_config, tmp_path, monkeypatch):
    def failing(training):
        (training.path / "metrics.jsonl").write_text('{"phase": "transfer", "epoch": 1}\n')
        raise RuntimeError("after the first epoch")

    monkeypatch.setattr(tsuika.api.Training, "fit", failing)
    with pytest.raises(RuntimeError):
        tsuika.train(base_config, name="kept")
    assert [p.name for p in run_folders(tmp_path / "runs")] == ["kept"]


def test_ctrl_c_keeps_the_run_folder_to_resume(base_config, tmp_path, monkeypatch):
    def interrupted(training):
        raise KeyboardInterrupt

    monkeypatch.setattr(tsuika.api.Training, "fit", interrupted)
    with pytest.raises(RunInterrupted):
        tsuika.train(base_config, name="stopped")
    folder = tmp_path / "runs" / "stopped"
    assert (folder / ".tsuika-run").is_file() and (folder / "config.yaml").is_file()


def test_a_failed_resume_removes_nothing(base_config, tmp_path, monkeypatch):
    def interrupted(training):
        raise KeyboardInterrupt

    monkeypatch.setattr(tsuika.api.Training, "fit", interrupted)
    with pytest.raises(RunInterrupted):
        tsuika.train(base_config, name="again")
    folder = tmp_path / "runs" / "again"
    before = sorted(p.name for p in folder.iterdir())

    def failing(training):
        raise RuntimeError("while resuming")

    monkeypatch.setattr(tsuika.api.Training, "fit", failing)
    with pytest.raises(RuntimeError):
        tsuika.train(resume=folder)
    assert sorted(p.name for p in folder.iterdir()) == before


# -- item 5 and item 9's `--processes` cases ----------------------------------------------------


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """`--processes N` launches recorded instead of started."""
    calls: list[tuple] = []

    def launch(args, processes, machines):
        calls.append((args, processes, machines))
        return 0

    from tsuika.train import distributed

    monkeypatch.setattr(distributed, "launch", launch)
    return calls


def test_processes_with_bad_data_is_one_error_before_any_worker(
    base_config, tmp_path, capsys, launches
):
    config = {**base_config, "data": {"train": str(tmp_path / "missing.csv")}}
    assert main(["train", *_args(config), "--processes", "2"]) == 2
    _one_error(capsys, "missing.csv")
    assert launches == []


def test_processes_with_a_taken_name_is_one_error_before_any_worker(
    base_config, tmp_path, capsys, launches
):
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    assert main(["train", *_args({**base_config, "name": "taken"}), "--processes", "2"]) == 2
    _one_error(capsys, "already exists")
    assert launches == []


def test_processes_with_a_sound_config_launches_the_workers(base_config, launches):
    assert main(["train", *_args(base_config), "--processes", "2"]) == 0
    [(args, processes, _)] = launches
    assert processes == 2 and "--processes" not in args


@pytest.mark.parametrize("count", ["0", "-1"])
def test_processes_below_one_is_an_error_naming_it(base_config, tmp_path, capsys, count):
    config = {**base_config, "data": {"train": str(tmp_path / "missing.csv")}}
    assert main(["train", *_args(config), "--processes", count]) == 2
    _one_error(capsys, f"--processes {count}")


def test_resume_with_processes_checks_the_run_before_any_worker(tmp_path, capsys, launches):
    assert main(["train", "--resume", str(tmp_path / "nothing"), "--processes", "2"]) == 2
    _one_error(capsys, "nothing", "no such run folder")
    assert launches == []


# -- item 8: an empty path is an error everywhere ------------------------------------------------


def test_check_with_an_empty_source_is_an_error(tiny_csv, capsys):
    assert main(["check", "--data", str(tiny_csv), "--source", "", "--quick"]) == 2
    _usage_error(capsys, "--source")


def test_the_api_refuses_an_empty_source_too(tiny_csv):
    from tsuika.advice.commands import check

    config = load_config(None, [f"data.train={tiny_csv}"])
    with pytest.raises(TsuikaError, match="source is empty"):
        check(config, source="", features=False)


@pytest.mark.parametrize(
    "args,option",
    [
        (["report", ""], "run"),
        (["predict", "", "good film"], "run"),
        (["predict", "RUN", "--file", ""], "--file"),
        (["evaluate", "RUN", "--data", ""], "--data"),
        (["generate", "RUN", "a photo", "--out", ""], "--out"),
        (["generate", "RUN", "--file", ""], "--file"),
        (["export", "RUN", "--out", ""], "--out"),
        (["compare", "RUN", "", "--out", "x.html"], "runs"),
        (["compare", "RUN", "RUN", "--out", ""], "--out"),
        (["train", "--resume", ""], "--resume"),
        (["train", "--data", ""], "--data"),
        (["train", "--test", ""], "--test"),
        (["train", "--output", ""], "--output"),
        (["distill", "--teacher", ""], "--teacher"),
        (["distill", "--unlabelled", ""], "--unlabelled"),
        (["check", "--data", ""], "--data"),
        (["rank", "--data", ""], "--data"),
        (["plan", "--data", ""], "--data"),
        (["inspect", "minilm-l6", ""], "config"),
        (["demo", "--output", ""], "--output"),
    ],
    ids=lambda value: " ".join(a or "''" for a in value) if isinstance(value, list) else "",
)
def test_every_path_option_refuses_an_empty_path(
    args, option, tiny_run, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # were "" read as ".", nothing is written where it matters
    args = [str(tiny_run.path) if arg == "RUN" else arg for arg in args]
    assert main(args) == 2
    _usage_error(capsys, option)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_config_argument_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "", "data.train=missing.csv"]) == 2
    _one_error(capsys, "empty argument")


@pytest.mark.parametrize(
    "key",
    [
        "output",
        "model_weights",
        "distill.teacher",
        "distill.student",
        "distill.unlabelled",
        "dreambooth.class_data",
        "diffusion.judge",
    ],
)
def test_every_path_key_refuses_an_empty_path(key):
    with pytest.raises(TsuikaError, match=f"`{key}`: .*is empty"):
        load_config(None, [f"{key}="])


# -- item 11: plan checks what its final run needs before the search ----------------------------


@pytest.fixture
def plan_config(base_config: dict) -> dict:
    return {k: v for k, v in base_config.items() if k != "method"}


@pytest.fixture
def no_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial that starts is a failure of these tests: they must fail before the search."""

    def attempt(*args, **kwargs):
        raise AssertionError("the search started")

    monkeypatch.setattr("tsuika.plan._attempt", attempt)


def test_plan_with_a_taken_name_fails_before_the_search(plan_config, tmp_path, no_search):
    from tsuika.plan import plan

    (tmp_path / "runs" / "taken").mkdir(parents=True)
    with pytest.raises(TsuikaError, match="already exists"):
        plan({**plan_config, "name": "taken"}, budget_seconds=None, budget_steps=10)


def test_plan_with_a_bad_output_fails_before_the_search(plan_config, tmp_path, no_search):
    from tsuika.plan import plan

    blocker = tmp_path / "a-file"
    blocker.write_text("x", encoding="utf-8")
    with pytest.raises(TsuikaError, match="a-file is a file"):
        plan({**plan_config, "output": str(blocker / "runs")}, budget_seconds=None)


@pytest.mark.parametrize("steps", ["0", "-1"])
def test_plan_refuses_max_steps_below_one(plan_config, capsys, steps, no_search):
    assert main(["plan", *_args(plan_config), "--max-steps", steps]) == 2
    err = _one_error(capsys, f"--max-steps {steps}")
    assert "--budget" not in err


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize(
    "error,code", [(KeyboardInterrupt(), 130), (TsuikaError("a mistake in a trial"), 2)]
)
def test_an_error_in_a_trial_is_said_once_without_optunas_traceback(
    plan_config, monkeypatch, capsys, error, code
):
    def attempt(*args, **kwargs):
        raise error

    monkeypatch.setattr("tsuika.plan._attempt", attempt)
    optuna_log = logging.getLogger("optuna")
    records = _Records()
    optuna_log.addHandler(records)
    try:
        assert main(["plan", *_args(plan_config), "--max-steps", "10"]) == code
    finally:
        optuna_log.removeHandler(records)
    failed = [r for r in records.records if r.exc_info or "failed" in r.getMessage()]
    assert failed == []
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
