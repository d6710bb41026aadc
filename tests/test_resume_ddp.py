"""Kill-and-resume and data-parallel equivalence, with real subprocesses.

A run killed with SIGKILL and resumed must end with the same weights as an uninterrupted run;
two gloo processes must reach the weights of one process with the same global batch size.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import csv_text, sentiment_rows
from safetensors.torch import load_file

from tsuika.cli import main

pytestmark = pytest.mark.slow


def _train_args(model: Path, data: Path, output: Path, name: str, **extra: object) -> list[str]:
    settings = {
        "method": "finetune",
        "train.epochs": 3,
        "train.batch_size": 8,
        "train.patience": "null",
        "train.lr": 3e-3,
        "train.backbone_lr": 1e-3,
        "baselines.scratch": "false",
        "progress": "false",
        "output": str(output),
        "name": name,
        "model": str(model),
        "data.train": str(data),
        **extra,
    }
    return ["train", *(f"{k}={v}" for k, v in settings.items())]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "weights.safetensors"))


def _assert_same(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol), (key, (a[key] - b[key]).abs().max())


def _checkpoint_steps(folder: Path) -> list[int]:
    """Steps of the complete checkpoints in `folder` right now (one may vanish as we read:
    a newer checkpoint replaces it)."""
    steps = []
    for path in folder.glob("step-*/loop.json"):
        try:
            steps.append(json.loads(path.read_text())["step"])
        except (FileNotFoundError, ValueError):
            continue
    return steps


def _wait_for_checkpoint(run: subprocess.Popen, checkpoints: Path, step: int) -> None:
    """Until `run` has checkpointed at `step` or later (it must still be running then)."""
    deadline = time.time() + 240
    while time.time() < deadline and run.poll() is None:
        if any(done >= step for done in _checkpoint_steps(checkpoints)):
            break
        time.sleep(0.02)
    assert run.poll() is None, "the run finished before it could be killed"


def _cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tsuika.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_sigkill_then_resume_matches_uninterrupted(tiny_bert_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "toy.csv"
    data.write_text(csv_text(sentiment_rows(800)), encoding="utf-8")
    output = tmp_path / "runs"
    extra = {"train.checkpoint_every": 5, "finetune.freeze": 1}  # dropout on: RNG must resume

    reference = _cli(_train_args(tiny_bert_dir, data, output, "whole", **extra))
    assert reference.wait(timeout=300) == 0, reference.stdout.read().decode()

    victim = _cli(_train_args(tiny_bert_dir, data, output, "killed", **extra))
    checkpoints = output / "killed" / "checkpoints" / "finetune"
    _wait_for_checkpoint(victim, checkpoints, step=60)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = output / "killed"
    assert not (killed / "summary.json").exists()
    loop = json.loads(next(iter(checkpoints.glob("step-*/loop.json"))).read_text())
    assert 0 < loop["step"] < 3 * 80  # really interrupted mid-run (80 steps per epoch)

    resumed = _cli(["train", "--resume", str(killed)])
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read().decode()
    # Measured 2026-11-23: max |difference| 0.0.
    _assert_same(_weights(killed), _weights(output / "whole"), atol=1e-6)
    epochs = [json.loads(line)["epoch"] for line in (killed / "metrics.jsonl").open()]
    assert epochs == [1, 2, 3]  # no epoch lost or repeated in the log


def test_resume_refuses_finished_run(
    tiny_bert_dir: Path, tiny_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _train_args(tiny_bert_dir, tiny_csv, tmp_path / "runs", "done", **{"train.epochs": 1})
    assert main(args) == 0
    before = (tmp_path / "runs" / "done" / "summary.json").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "runs" / "done")]) == 2
    assert "already finished (summary.json exists); nothing to resume" in capsys.readouterr().err
    assert (tmp_path / "runs" / "done" / "summary.json").read_bytes() == before


def test_two_gloo_processes_match_one(dropout_free_bert: Path, tmp_path: Path) -> None:
    data = tmp_path / "toy.csv"
    data.write_text(csv_text(sentiment_rows(96)), encoding="utf-8")
    output = tmp_path / "runs"
    # 96 rows → 77 train (after stratified val/test): global batch 8, split 4 + 4.
    one = _cli(_train_args(dropout_free_bert, data, output, "one"))
    assert one.wait(timeout=300) == 0, one.stdout.read().decode()
    two = _cli([*_train_args(dropout_free_bert, data, output, "two"), "--processes", "2"])
    assert two.wait(timeout=300) == 0, two.stdout.read().decode()
    # Measured 2026-11-23: max |difference| 7.3e-7 (gloo all-reduce sums in another order).
    _assert_same(_weights(output / "two"), _weights(output / "one"), atol=1e-5)
    summary = json.loads((output / "two" / "summary.json").read_text())
    assert summary["training"]["processes"] == 2  # really data-parallel
    assert (
        summary["data"]["train"]
        == json.loads((output / "one" / "summary.json").read_text())["data"]["train"]
    )
