"""Issue 19: no code runs from a model folder, nothing tsuika did not write is overwritten or
lost, overrides are never silently reinterpreted, and Ctrl-C says how to resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import csv_text, sentiment_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tsuika
from tsuika.cli import main
from tsuika.config import Config, load_config, parse_overrides
from tsuika.errors import RunInterrupted, TsuikaError

# -- 1. no code from a model folder -----------------------------------------------------------

EVIL_CODE = """
from pathlib import Path
Path({marker!r}).write_text("ran")
from transformers import BertConfig, BertModel
class EvilConfig(BertConfig):
    model_type = "evil"
class EvilModel(BertModel):
    config_class = EvilConfig
"""


def _evil_folder(tiny_bert_dir: Path, folder: Path, marker: Path, model_type: str) -> Path:
    """A copy of the tiny BERT whose config asks to run `evil.py` (which leaves `marker`)."""
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _cli(args: list[str], stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tsuika.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["evil", "bert"])
def test_tampered_meta_pointing_at_custom_code_never_runs_it(
    tiny_run: tsuika.Run, tiny_bert_dir: Path, tmp_path: Path, model_type: str
) -> None:
    marker = tmp_path / "code-ran"
    evil = _evil_folder(tiny_bert_dir, tmp_path / "evil-model", marker, model_type)
    run = tmp_path / "run"
    shutil.copytree(tiny_run.path, run)
    meta = json.loads((run / "model" / "meta.json").read_text())
    meta["model"]["source"] = str(evil)
    (run / "model" / "meta.json").write_text(json.dumps(meta))

    done = _cli(["predict", str(run), "a good film"], stdin="y\ny\ny\n", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "auto_map" in done.stderr and "custom-code models are not supported" in done.stderr
    assert "Traceback" not in done.stderr
    assert not marker.exists()


def test_training_on_a_custom_code_folder_is_refused_before_any_folder(
    tiny_bert_dir: Path, tiny_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "code-ran"
    evil = _evil_folder(tiny_bert_dir, tmp_path / "evil-model", marker, "evil")
    code = main(["train", f"model={evil}", f"data.train={tiny_csv}", f"output={tmp_path / 'r'}"])
    assert code == 2
    assert "auto_map" in capsys.readouterr().err
    assert not marker.exists()
    assert not (tmp_path / "r").exists()


# -- 2. --resume only continues tsuika's own unfinished runs ----------------------------------


def test_resume_refuses_a_folder_tsuika_did_not_create(
    tiny_run: tsuika.Run, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    project = tmp_path / "proj"
    (project / "model").mkdir(parents=True)
    shutil.copy(tiny_run.path / "config.yaml", project / "config.yaml")
    (project / "metrics.jsonl").write_text("precious\n")
    assert main(["train", "--resume", str(project)]) == 2
    assert "not an unfinished tsuika run" in capsys.readouterr().err
    assert (project / "metrics.jsonl").read_text() == "precious\n"
    assert sorted(p.name for p in project.rglob("*")) == ["config.yaml", "metrics.jsonl", "model"]


def test_every_new_run_folder_carries_the_marker(tiny_run: tsuika.Run) -> None:
    assert (tiny_run.path / ".tsuika-run").is_file()


# -- 3. resuming after a kill in each phase loses and repeats no metrics line -----------------


def _train_cli(model: Path, data: Path, output: Path, name: str) -> list[str]:
    settings = {
        "method": "finetune",
        "finetune.freeze": 1,
        "train.epochs": 3,
        "train.batch_size": 8,
        "train.patience": "null",
        "train.checkpoint_every": 5,
        "baselines.scratch": "true",
        "baselines.scratch_epochs": 3,
        "progress": "false",
        "output": str(output),
        "name": name,
        "model": str(model),
        "data.train": str(data),
    }
    return ["train", *(f"{k}={v}" for k, v in settings.items())]


def _wait_for_checkpoint(process: subprocess.Popen, folder: Path, epoch: int) -> None:
    """Return once `folder` holds a checkpoint at or after `epoch` (fails if the run ends)."""
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        for done in folder.glob("step-*/loop.json"):
            try:
                if json.loads(done.read_text())["epoch"] >= epoch:
                    return
            except (ValueError, FileNotFoundError):
                continue  # being replaced right now
        time.sleep(0.01)
    pytest.fail("the run ended before it could be killed")


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["finetune", "scratch"])
def test_sigterm_in_each_phase_then_resume_keeps_every_metrics_line(
    tiny_bert_dir: Path, tmp_path: Path, phase: str
) -> None:
    data = tmp_path / "toy.csv"
    data.write_text(csv_text(sentiment_rows(600)), encoding="utf-8")
    output = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    victim = subprocess.Popen(
        [sys.executable, "-m", "tsuika.cli", *_train_cli(tiny_bert_dir, data, output, "r")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Kill mid-way through epoch 2 of `phase` (for `scratch`, the first phase has finished).
    _wait_for_checkpoint(victim, output / "r" / "checkpoints" / phase, epoch=2)
    victim.send_signal(signal.SIGTERM)
    victim.wait()
    run = output / "r"
    assert not (run / "summary.json").exists()

    resumed = _cli(["train", "--resume", str(run)])
    assert resumed.returncode == 0, resumed.stderr
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["epoch"]) for r in lines] == [
        ("finetune", 1),
        ("finetune", 2),
        ("finetune", 3),
        ("scratch", 1),
        ("scratch", 2),
        ("scratch", 3),
    ]


def test_metrics_log_cuts_a_torn_line_and_appends_after_it(tmp_path: Path) -> None:
    from tsuika.run_files import read_metrics
    from tsuika.train.metrics_log import MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"phase": "transfer", "epoch": 1, "val_loss": 0.5}\n{"phase": "trans')
    MetricsLog(path).writer("transfer")([{"epoch": 1}, {"epoch": 2}])
    lines = path.read_text().splitlines()
    assert lines[0].startswith('{"phase": "transfer", "epoch": 1, "val_loss"')  # kept as it was
    assert json.loads(lines[-1]) == {"phase": "transfer", "epoch": 2}
    assert len(lines) == 2  # the torn line is gone (the report reads every line), no repeat
    assert [r["epoch"] for r in read_metrics(path)] == [1, 2]


# -- 4. overrides are read by the key's declared type, never as free YAML ---------------------


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("data.train=#missing.csv", "train", "#missing.csv"),
        ("data.train=null", "train", "null"),
        ("data.train=~", "train", "~"),
        ("data.train=1_000", "train", "1_000"),
        ("data.train=[v2].csv", "train", "[v2].csv"),
        ("data.train= spaced.csv", "train", " spaced.csv"),
    ],
)
def test_a_path_override_is_taken_literally(override: str, key: str, expected: str) -> None:
    assert getattr(load_config(overrides=[override]).data, key) == expected


def test_a_numeric_looking_name_is_kept_exactly() -> None:
    assert load_config(overrides=["name=0x10"]).name == "0x10"
    assert load_config(overrides=["name=1e3"]).name == "1e3"


def test_typed_keys_are_converted_by_their_type() -> None:
    config = load_config(
        overrides=[
            "train.lr=1e-4",
            "data.k=64",
            "train.patience=null",
            "progress=off",
            "finetune.freeze=[block1, block2]",
            "data.augment.crop_scale=[0.6, 1.0]",
            "finetune.group_lr.head=0.01",
        ]
    )
    assert config.train.lr == 1e-4 and config.data.k == 64 and config.train.patience is None
    assert config.progress is False
    assert config.finetune.freeze == ["block1", "block2"]
    assert config.data.augment.crop_scale == (0.6, 1.0)
    assert config.finetune.group_lr == {"head": 0.01}
    assert load_config(overrides=["finetune.freeze=3"]).finetune.freeze == 3


@pytest.mark.parametrize(
    ("override", "mentions"),
    [
        ("train.lr=[unclosed", "`train.lr`"),
        ("seed=!!python/object/apply:os.system [echo hi]", "`seed`"),
        ("finetune.freeze=[unclosed", "finetune.freeze=[unclosed"),
        ("data.k=0x10", "`data.k`"),
        ("data.train=", "`data.train`"),
        ("=3", "no key name"),
        ("train..lr=3", "no key name"),
    ],
)
def test_bad_override_is_one_clear_error(override: str, mentions: str) -> None:
    with pytest.raises(TsuikaError, match=re.escape(mentions)):
        load_config(overrides=[override])


def test_flags_are_strings_and_never_fall_back_to_bundled_data(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for value in ["#missing.csv", "null", "[v2].csv"]:
        code = main(["train", "--data", value, "--output", str(tmp_path / "r"), "--quiet"])
        assert code == 2
        assert f"data file {value} not found" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_parse_overrides_keeps_text_for_validation() -> None:
    assert parse_overrides(["name=null", "train.lr=0.001"]) == {
        "name": "null",
        "train": {"lr": "0.001"},
    }


# -- 7. predicting an empty text; Ctrl-C ------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   "])
def test_predict_refuses_an_empty_text(
    tiny_run: tsuika.Run, text: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["predict", str(tiny_run.path), "good film", text]) == 2
    assert "text 2 to predict is empty" in capsys.readouterr().err


def test_ctrl_c_during_a_run_says_how_to_resume(
    base_config: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import tsuika.api

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tsuika.api, "run_phase", interrupted)
    with pytest.raises(RunInterrupted, match=re.escape(base_config["output"])) as err:
        tsuika.train(base_config)
    run = Path(err.value.path)
    assert (run / ".tsuika-run").is_file() and (run / "config.yaml").is_file()

    args = ["train", f"model={base_config['model']}", f"data.train={base_config['data']['train']}"]
    assert main([*args, f"output={base_config['output']}", "progress=false"]) == 130
    message = capsys.readouterr().err
    assert "interrupted" in message and "tsuika train --resume" in message


# -- property: any override string gives a Config or a TsuikaError ---------------------------


def _dotted_keys(model: type, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            keys += _dotted_keys(annotation, f"{prefix}{name}.")
    return keys


KNOWN_KEYS = _dotted_keys(Config)
VALUES = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["null", "~", "true", "[a, b]", "{a: 1}", "[", "{", "!!python/name:os", "1e-3"]
    ),
    st.integers().map(str),
    st.floats(allow_nan=True).map(str),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.tuples(st.sampled_from(KNOWN_KEYS), VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
            st.text(max_size=40),
        ),
        max_size=4,
    )
)
def test_any_override_gives_a_config_or_a_clear_error(pairs: list[str]) -> None:
    try:
        config = load_config(overrides=pairs)
    except TsuikaError as err:
        assert str(err)
    else:
        assert isinstance(config, Config)
