"""Scaling out (issue 33, item 4), with real subprocesses and gloo on 127.0.0.1.

Two "machines" — two launches of `tsuika train --machines 2`, each in its own working folder
as if on its own disk — must reach the weights and the training losses of one process with
the same global batch; an FSDP run (`train.fsdp`, two processes) too, and killed mid-run it
resumes in three processes from its sharded checkpoint to the same weights, and its run
exports to a folder that plain transformers loads. A run that cannot be sharded or launched
is one error, before any worker starts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from helpers import csv_text, sentiment_rows
from safetensors.torch import load_file
from test_resume_ddp import _train_args, _wait_for_checkpoint, _weights

from tsuika.cli import main
from tsuika.train import distributed
from tsuika.train.distributed import Machines


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


EXAMPLES = Path(__file__).parent.parent / "examples"
TSUIKA = [sys.executable, "-m", "tsuika.cli"]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]


def _start(args: list[str], cwd: Path | None = None, launcher=TSUIKA) -> subprocess.Popen:
    """`tsuika ARGS` (or another launcher's) as a subprocess, its output kept."""
    return subprocess.Popen(
        [*launcher, *args],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _finish(process: subprocess.Popen) -> None:
    assert process.wait(timeout=300) == 0, process.stdout.read().decode()


def _assert_same(a: dict, b: dict) -> None:
    """Equal to 1e-5 (measured 2026-12-07: max |difference| 2.5e-7 on these 200 rows, 4.3e-7
    on 400; gloo sums in another order), but for attention's key biases: softmax ignores
    them, so their gradient is zero but for rounding, which Adam divides by its own square
    root: they drift apart by 1.9e-6 here, 1.2e-5 on 400 rows."""
    assert a.keys() == b.keys()
    for key in a:
        if not key.endswith("attention.self.key.bias"):
            difference = (a[key] - b[key]).abs().max()
            assert torch.allclose(a[key], b[key], atol=1e-5), (key, difference)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").open()]


@pytest.fixture(scope="module")
def one_process(dropout_free_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one process, the data of every test below."""
    folder = tmp_path_factory.mktemp("one-process")
    (folder / "toy.csv").write_text(csv_text(sentiment_rows(200)), encoding="utf-8")
    _finish(_start(_train_args(dropout_free_bert, Path("toy.csv"), Path("runs"), "one"), folder))
    return folder / "runs" / "one"


@pytest.mark.slow
def test_two_machines_match_one_process(
    dropout_free_bert: Path, one_process: Path, tmp_path: Path
) -> None:
    port = _free_port()
    disks = [tmp_path / "machine0", tmp_path / "machine1"]
    for disk in disks:
        disk.mkdir()
        (disk / "toy.csv").write_bytes((one_process.parent.parent / "toy.csv").read_bytes())
    # No name: the main machine chooses the folder and tells the other.
    args = _train_args(dropout_free_bert, Path("toy.csv"), Path("runs"), "x")
    args.remove("name=x")
    # The main machine through tsuika's flags, the other through Accelerate's launcher and the
    # example config: the two ways the README gives, and they work together.
    machine = ["--machines", "2", "--machine-rank", "0", "--main-address", f"127.0.0.1:{port}"]
    main = _start([*args, *machine], disks[0])
    accelerate = [
        *("--config_file", str(EXAMPLES / "accelerate" / "two-machines.yaml")),
        *("--machine_rank", "1", "--main_process_ip", "127.0.0.1"),
        *("--main_process_port", str(port), "-m", "tsuika.cli"),
    ]
    other = _start(accelerate + args, disks[1], launcher=ACCELERATE)
    _finish(main)
    _finish(other)
    [run] = (disks[0] / "runs").iterdir()
    _assert_same(_weights(run), _weights(one_process))
    assert _losses(run) == pytest.approx(_losses(one_process), abs=1e-6)  # every process's
    summary = json.loads((run / "summary.json").read_text())
    assert summary["training"]["processes"] == 2
    # Only the main machine writes the run: the other's disk holds nothing of it.
    assert not (disks[1] / "runs").exists()


@pytest.mark.slow
def test_fsdp_matches_one_process_resumes_from_shards_and_exports(
    dropout_free_bert: Path, one_process: Path, tmp_path: Path
) -> None:
    data = one_process.parent.parent / "toy.csv"
    output = tmp_path / "runs"
    extra = {"train.fsdp": "true", "train.checkpoint_every": 5}
    args = [*_train_args(dropout_free_bert, data, output, "sharded", **extra), "--processes", "2"]
    victim = _start(args)
    checkpoints = output / "sharded" / "checkpoints" / "finetune"
    steps = [json.loads(line)["step"] for line in (one_process / "metrics.jsonl").open()]
    _wait_for_checkpoint(victim, checkpoints, step=steps[0] + 5)  # in epoch 2
    # The launcher, torchrun and both workers (torchrun starts its workers in sessions of
    # their own: the launcher's process group does not hold them).
    for process in [*psutil.Process(victim.pid).children(recursive=True), victim]:
        process.kill()
    victim.wait()
    run = output / "sharded"
    assert not (run / "summary.json").exists()
    [checkpoint] = [p for p in checkpoints.glob("step-*") if (p / "loop.json").is_file()]
    killed_at = json.loads((checkpoint / "loop.json").read_text())["step"]
    assert 0 < killed_at < steps[-1]  # really interrupted mid-run
    shards = sorted((checkpoint / "shards").glob("*.safetensors"))
    assert len(shards) == 2  # one per process, no pickle
    shard = load_file(str(shards[0]))
    full = load_file(str(one_process / "model" / "weights.safetensors"))
    embeddings = next(k for k in full if "word_embeddings" in k)
    assert shard[f"weights.{embeddings}"].shape[0] < full[embeddings].shape[0]  # really a shard

    # Three processes resume what two wrote: the shards are read by offset.
    _finish(_start(["train", "--resume", str(run), "--processes", "3"]))
    _assert_same(_weights(run), _weights(one_process))
    assert _losses(run) == pytest.approx(_losses(one_process), abs=1e-6)  # epochs 1-3, once
    training = json.loads((run / "summary.json").read_text())["training"]
    assert training["processes"] == 3 and training["sharded"] is True

    _finish(_start(["export", str(run), "--out", str(tmp_path / "plain")]))
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "plain").state_dict()
    exported = next(v for k, v in plain.items() if k.endswith("word_embeddings.weight"))
    assert torch.allclose(exported, _weights(run)[embeddings])


# -- mistakes said once, before any worker ---------------------------------------------------


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []
    monkeypatch.setattr(distributed, "launch", lambda *call: calls.append(call) or 0)
    return calls


def _train(config: dict, *extra: str) -> list[str]:
    return ["train", *(f"{k}={v}" for k, v in _flat(config).items()), *extra]


def _flat(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = "null" if value is None else value
    return flat


@pytest.mark.parametrize(
    ("settings", "flags", "said"),
    [
        ({}, [], "--processes N (N ≥ 2)"),
        ({"method": "lora"}, ["--processes", "2"], "not `lora`"),
        ({"data.retain": "bundled:speeches"}, ["--processes", "2"], "data.retain"),
        ({"finetune.l2sp": "1"}, ["--processes", "2"], "finetune.l2sp"),
    ],
)
def test_a_run_fsdp_cannot_shard_is_one_error(base_config, capsys, launches, settings, flags, said):
    config = {**_flat(base_config), "method": "finetune", "train.fsdp": "true", **settings}
    assert main(["train", *(f"{k}={v}" for k, v in config.items()), *flags]) == 2
    error = capsys.readouterr().err
    assert said in error and "Traceback" not in error and error.count("error:") == 1
    assert launches == []


def test_accelerates_own_fsdp_is_refused_for_tsuikas(base_config, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert main(_train(base_config)) == 2
    assert "set train.fsdp=true" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--machines", "2"], "--main-address HOST:PORT"),
        (["--machines", "2", "--machine-rank", "2", "--main-address", "h:1"], "give 0 to 1"),
        (["--machines", "2", "--main-address", "10.0.0.1"], "give HOST:PORT"),
    ],
)
def test_machine_mistakes_are_one_error(base_config, capsys, launches, flags, said):
    assert main([*_train(base_config), *flags]) == 2
    assert said in capsys.readouterr().err
    assert launches == []


def test_workers_get_the_run_without_the_launch_options(base_config, launches):
    flags = ["--processes", "2", "--machines=2", "--machine-rank", "1"]
    assert main([*_train(base_config), *flags, "--main-address", "10.0.0.1:29500"]) == 0
    [(args, processes, machines)] = launches
    assert processes == 2 and machines == Machines(2, 1, "10.0.0.1:29500")
    assert not [a for a in args if a.startswith("--")]
    assert Machines(2, 1, "10.0.0.1:29500").torchrun_arguments(2) == [
        "--nnodes=2",
        "--node_rank=1",
        "--master_addr=10.0.0.1",
        "--master_port=29500",
        "--nproc_per_node=2",
    ]
