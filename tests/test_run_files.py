"""Damaged run folders and checkpoints, bad `output`/`name`, and the modes of saved files.

Every damaged file must give one TsuikaError line naming it (exit code 2 from the CLI), never
a traceback from safetensors, json, pydantic or torch.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import fast_config, run_folders
from safetensors.torch import load_file, save_file

import tsuika
import tsuika.models
from tsuika.cli import main
from tsuika.errors import TsuikaError
from tsuika.run_folder import create_run_dir
from tsuika.train.checkpoint import LoopState, latest_checkpoint, load_checkpoint, save_checkpoint

# -- run folders ---------------------------------------------------------------------------


@pytest.fixture
def run_copy(tiny_run: tsuika.Run, tmp_path: Path) -> Path:
    """A private copy of the shared run folder, free to damage."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run.path, copy)
    return copy


def _predict_fails_naming(run: Path, file_name: str, capsys: pytest.CaptureFixture[str]) -> str:
    """`tsuika predict` on `run` exits with 2 and one error line that names `file_name`."""
    assert main(["predict", str(run), "good film"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in captured.err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert file_name in err
    assert "damaged" in err
    assert captured.out == ""
    return err


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage",
    [
        _truncate,
        lambda path: path.write_bytes(b""),
        lambda path: path.write_bytes(random.Random(0).randbytes(path.stat().st_size)),
        lambda path: path.write_bytes(path.read_bytes()[:-1]),
    ],
    ids=["half", "empty", "random-bytes", "last-byte-cut"],
)
def test_damaged_weights_file_is_one_error_line(
    run_copy: Path, damage: Callable[[Path], Any], capsys: pytest.CaptureFixture[str]
) -> None:
    damage(run_copy / "model" / "weights.safetensors")
    _predict_fails_naming(run_copy, "weights.safetensors", capsys)
    with pytest.raises(TsuikaError, match=r"weights\.safetensors: cannot be read .*damaged"):
        tsuika.load(run_copy)


def _edit_meta(run: Path, edit: Callable[[dict], Any]) -> None:
    path = run / "model" / "meta.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _set(*keys_and_value: Any) -> Callable[[dict], None]:
    *keys, value = keys_and_value

    def edit(meta: dict) -> None:
        target = meta
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


def _pop(*keys: str) -> Callable[[dict], None]:
    def edit(meta: dict) -> None:
        target = meta
        for key in keys[:-1]:
            target = target[key]
        target.pop(keys[-1])

    return edit


TASKS = "classify, multi-task, regression"
NOT_TWO_LABELS = "`task`: `labels.label` needs at least two different labels"
REGRESSION = {"name": "regression", "column": "label", "loss": "mse", "huber_delta": 1.0}

META_DAMAGE: dict[str, tuple[Callable[[dict], Any], str]] = {
    "format-missing": (_pop("format"), "lacks the key `format`"),
    "model-missing": (_pop("model"), "lacks the key `model`"),
    "task-missing": (_pop("task"), "lacks the key `task`"),
    "method-missing": (_pop("method"), "lacks the key `method`"),
    "format-1": (_set("format", 1), "has format 1, this tsuika reads format 2"),
    "format-true": (_set("format", True), "has format True, this tsuika reads format 2"),
    "model-list": (_set("model", []), "`model` is not an object"),
    "source-missing": (_pop("model", "source"), "`model.source` is not a model name"),
    "source-int": (_set("model", "source", 3), "`model.source` is not a model name"),
    "source-empty": (_set("model", "source", ""), "`model.source` is not a model name"),
    "head-missing": (_pop("model", "head"), "`model.head` is not an object"),
    "head-str": (_set("model", "head", "linear"), "`model.head` is not an object"),
    "head-type": (_set("model", "head", "type", "conv"), "`model.head.type`: Input should be"),
    "head-unknown-key": (_set("model", "head", "layers", 3), "`model.head.layers`: Extra inputs"),
    "max-length-str": (
        _set("model", "max_length", "128"),
        "`model.max_length` is not a positive integer",
    ),
    "max-length-zero": (
        _set("model", "max_length", 0),
        "`model.max_length` is not a positive integer",
    ),
    "weights-int": (_set("model", "weights", 3), "`model.weights` is not a path"),
    "method-unknown": (_set("method", "quantum"), "`method` 'quantum' is not one of transfer"),
    "method-int": (_set("method", 1), "`method` 1 is not one of transfer"),
    "task-name": (_set("task", "name", "distill"), f"`task.name` is not one of {TASKS}"),
    "task-name-missing": (_pop("task", "name"), f"`task.name` is not one of {TASKS}"),
    "task-list": (_set("task", []), f"`task.name` is not one of {TASKS}"),
    "labels-missing": (
        _pop("task", "labels"),
        "`task`: `labels` is not an object of label columns",
    ),
    "labels-list": (
        _set("task", "labels", ["neg", "pos"]),
        "`task`: `labels` is not an object of label columns",
    ),
    "labels-short": (lambda meta: meta["task"]["labels"]["label"].pop(), NOT_TWO_LABELS),
    "labels-duplicate": (_set("task", "labels", "label", ["pos", "pos"]), NOT_TWO_LABELS),
    "labels-ints": (
        _set("task", "labels", "label", [0, 1]),
        "`task`: `labels.label` is not a list of strings",
    ),
    "task-weights-str": (
        _set("task", "weights", {"label": "1"}),
        "`task`: `weights` is not an object of finite numbers",
    ),
    "regression-std-zero": (
        _set("task", {**REGRESSION, "mean": 0.0, "std": 0.0}),
        "`task`: `std` and `huber_delta` must be positive",
    ),
    "regression-mean-nan": (
        _set("task", {**REGRESSION, "mean": float("nan"), "std": 1.0}),
        "`task`: `mean` is not finite",
    ),
}


META_DAMAGE |= {
    "method-list": (_set("method", ["transfer"]), "`method` ['transfer'] is not one of transfer"),
    "task-name-list": (_set("task", "name", ["classify"]), f"`task.name` is not one of {TASKS}"),
    "task-weights-unknown-column": (
        _set("task", "weights", {"label": 1.0, "other": 2.0}),
        "`task`: `weights` names a column without labels",
    ),
    "task-weights-nan": (
        _set("task", "weights", {"label": float("nan")}),
        "`task`: `weights` is not an object of finite numbers",
    ),
}
META_CASES = list(META_DAMAGE)


@pytest.mark.parametrize("case", META_CASES)
def test_damaged_meta_json_is_refused_before_the_model_is_built(
    run_copy: Path,
    case: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    edit, message = META_DAMAGE[case]
    _edit_meta(run_copy, edit)

    def must_not_build(spec: dict, new_head: Callable, pretrained: bool = True) -> None:
        raise AssertionError("model built from an unchecked meta.json")

    # meta.json may come from someone else: nothing is built from it before it is checked.
    monkeypatch.setattr(tsuika.models, "model_from_spec", must_not_build)
    err = _predict_fails_naming(run_copy, "meta.json", capsys)
    assert message in err
    with pytest.raises(TsuikaError, match=re.escape(message)):
        tsuika.load(run_copy)


@pytest.mark.parametrize(
    "content",
    ["{not json", "[1, 2]", '"meta"', "", "\udcff"],
    ids=["bad", "list", "str", "empty", "utf8"],
)
def test_unparsable_meta_json_is_one_error_line(
    run_copy: Path, content: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = run_copy / "model" / "meta.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    _predict_fails_naming(run_copy, "meta.json", capsys)


def test_trained_group_outside_the_model_is_refused(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Which groups trained is known from the weights file's keys: a stage the model lacks.
    path = run_copy / "model" / "weights.safetensors"
    weights = load_file(str(path))
    save_file({**weights, "stages.99.weight": torch.zeros(2)}, str(path))
    err = _predict_fails_naming(run_copy, "weights.safetensors", capsys)
    assert "holds tensor stages.99.weight, which the model does not have" in err


def test_tensor_of_the_wrong_shape_is_refused(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = run_copy / "model" / "weights.safetensors"
    weights = load_file(str(path))
    key = next(k for k in weights if k.endswith("weight"))
    weights[key] = torch.zeros(weights[key].shape[0] + 1, *weights[key].shape[1:])
    save_file(weights, str(path))
    err = _predict_fails_naming(run_copy, "weights.safetensors", capsys)
    assert f"tensor {key} has shape" in err


@pytest.mark.parametrize(
    "labels", [["neg", "pos", "meh"], ["neg", "pos", "meh", "so-so"]], ids=["three", "four"]
)
def test_labels_that_do_not_fit_the_head_are_caught_by_the_head_shape(
    run_copy: Path, labels: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Valid but wrong metadata (the head is built for its labels): only the weights can tell,
    # and they must say so clearly.
    _edit_meta(run_copy, _set("task", "labels", "label", labels))
    err = _predict_fails_naming(run_copy, "weights.safetensors", capsys)
    # The head (stage 4 of the tiny BERT) was trained for 2 labels.
    assert re.search(rf"tensor stages\.4\.net\.1\.\w+ has shape \(2,.*needs \({len(labels)},", err)


def test_tensors_missing_or_foreign_are_refused(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = run_copy / "model" / "weights.safetensors"
    weights = load_file(str(path))
    save_file({**weights, "stages.0.planted": torch.zeros(1)}, str(path))
    err = _predict_fails_naming(run_copy, "weights.safetensors", capsys)
    assert "stages.0.planted" in err

    save_file({k: v for k, v in list(weights.items())[1:]}, str(path))
    err = _predict_fails_naming(run_copy, "weights.safetensors", capsys)
    assert "lacks 1 tensors" in err


def test_intact_copy_still_predicts(run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(run_copy), "good film"]) == 0
    assert capsys.readouterr().out.split("\t")[0] in ("pos", "neg")


def test_weights_get_the_same_mode_as_the_other_files(tiny_run: tsuika.Run) -> None:
    model = tiny_run.path / "model"

    def mode(path: Path) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    assert mode(model / "weights.safetensors") == mode(model / "meta.json")
    assert mode(model / "weights.safetensors") == mode(tiny_run.path / "summary.json")


# -- output and name -----------------------------------------------------------------------


def test_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(TsuikaError, match=r"file\.txt is a file\); choose another `output`"):
        create_run_dir(file, "run", "default")
    with pytest.raises(TsuikaError, match=r"file\.txt is a file\); choose another `output`"):
        create_run_dir(file, None, "default")
    # inside a file: refused for root too, unlike permissions
    with pytest.raises(TsuikaError, match=r"output folder .*runs cannot be created .*file\.txt"):
        create_run_dir(file / "runs", "run", "default")
    assert file.read_text() == "x"


def test_unwritable_output_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(TsuikaError, match=r"permission denied\); choose another `output`"):
            create_run_dir(locked, "run", "default")
        with pytest.raises(TsuikaError, match=r"permission denied\); choose another `output`"):
            create_run_dir(locked / "sub", None, "default")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a/b", "path separator"),
        ("../x", "path separator"),
        ("/abs", "path separator"),
        (".", "not a folder name"),
        ("..", "not a folder name"),
        ("", "is empty"),
        ("  ", "is empty"),
        ("a\0b", "NUL"),
    ],
)
def test_name_that_is_not_one_folder_name_is_refused(
    tmp_path: Path, name: str, problem: str
) -> None:
    output = tmp_path / "runs"
    with pytest.raises(TsuikaError, match=rf"`name` .* {problem}.*plain folder name"):
        create_run_dir(output, name, "default")
    assert sorted(tmp_path.iterdir()) == []  # nothing made, inside or outside `output`


def test_cli_reports_a_bad_output_and_name_in_one_line(
    tiny_bert_dir: Path, tiny_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "file.txt"
    file.write_text("x")
    base = ["train", "--model", str(tiny_bert_dir), "--data", str(tiny_csv)]
    base += ["progress=false", "baselines.scratch=false", "train.epochs=1"]
    for extra, key in (
        ([f"output={file / 'runs'}"], "`output`"),
        (["--name", "../escape", f"output={tmp_path / 'runs'}"], "`name`"),
    ):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err
        assert len(err.splitlines()) == 1, err
        assert key in err
    assert not (tmp_path / "escape").exists()
    assert run_folders(tmp_path / "runs") == []


def test_api_reports_a_bad_output(tiny_bert_dir: Path, tiny_csv: Path, tmp_path: Path) -> None:
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(TsuikaError, match="choose another `output`"):
        tsuika.train(fast_config(tiny_bert_dir, tiny_csv, file, train={"epochs": 1}))


# -- checkpoints ---------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A real checkpoint: small weights, an AdamW state after one step, the RNG state."""
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.ones(3)
    optimizer.step()
    loop = LoopState(epoch=2, micro=1, step=5, patience_left=3, history=[{"epoch": 1}])
    weights = {"stages.0.weight": param.detach().clone()}
    saved = save_checkpoint(tmp_path / "checkpoints", loop, weights, weights, optimizer)
    assert latest_checkpoint(tmp_path / "checkpoints") == saved
    return saved


def test_intact_checkpoint_round_trips(checkpoint: Path) -> None:
    loop, weights, best, optimizer, rng = load_checkpoint(checkpoint)
    assert loop == LoopState(epoch=2, micro=1, step=5, patience_left=3, history=[{"epoch": 1}])
    assert torch.equal(weights["stages.0.weight"], best["stages.0.weight"])
    assert optimizer["param_groups"][0]["lr"] == 0.1
    assert rng["torch"].dtype == torch.uint8


def test_checkpoint_weights_get_the_same_mode_as_the_other_files(checkpoint: Path) -> None:
    def mode(name: str) -> int:
        return stat.S_IMODE(os.stat(checkpoint / name).st_mode)

    assert mode("weights.safetensors") == mode("best.safetensors") == mode("optimizer.pt")
    assert mode("weights.safetensors") == mode("loop.json")


def _damaged(name: str, detail: str = "") -> str:
    return rf"checkpoint .*step-\S+ is damaged \({re.escape(name)}: {detail}.*delete that folder"


@pytest.mark.parametrize("name", ["optimizer.pt", "rng.pt"])
@pytest.mark.parametrize(
    "damage",
    [
        _truncate,
        lambda path: path.write_bytes(b""),
        lambda path: path.write_bytes(path.read_bytes()[:1]),
        lambda path: path.write_bytes(path.read_bytes()[:-30]),
        lambda path: path.write_bytes(random.Random(1).randbytes(500)),
        lambda path: path.write_bytes(b"garbage" * 50),
        lambda path: torch.save([1, 2], path),
        lambda path: torch.save({"other": 1}, path),
    ],
    ids=["half", "empty", "one-byte", "tail-cut", "random", "garbage", "list", "wrong-keys"],
)
def test_damaged_checkpoint_pickle_is_refused(
    checkpoint: Path, name: str, damage: Callable[[Path], Any]
) -> None:
    damage(checkpoint / name)
    with pytest.raises(TsuikaError, match=_damaged(name)) as caught:
        load_checkpoint(checkpoint)
    assert "\n" not in str(caught.value)  # torch's multi-paragraph hints are cut


def test_rng_state_of_the_wrong_kind_is_refused(checkpoint: Path) -> None:
    torch.save({"torch": torch.zeros(3)}, checkpoint / "rng.pt")
    with pytest.raises(TsuikaError, match=_damaged("rng.pt", "`torch` is not")):
        load_checkpoint(checkpoint)


@pytest.mark.parametrize("name", ["weights.safetensors", "best.safetensors"])
@pytest.mark.parametrize(
    "damage",
    [
        _truncate,
        lambda path: path.write_bytes(random.Random(2).randbytes(200)),
        lambda path: path.unlink(),
    ],
    ids=["half", "random", "missing"],
)
def test_damaged_checkpoint_weights_are_refused(
    checkpoint: Path, name: str, damage: Callable[[Path], Any]
) -> None:
    damage(checkpoint / name)
    with pytest.raises(TsuikaError, match=_damaged(name)):
        load_checkpoint(checkpoint)


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ("{", "Expecting"),
        ("[]", "not a JSON object"),
        ("", "Expecting value"),
        ('{"epoch": 1}', "lacks `micro`"),
        ("extra", "`surprise`: Unexpected"),
        ('epoch:"2"', "`epoch`: Input should be a valid integer"),
        ("epoch:true", "`epoch`: Input should be a valid integer"),
        ("finished:1", "`finished`: Input should be a valid boolean"),
        ("history:[1]", "`history.0`: Input should be"),
    ],
)
def test_damaged_loop_json_is_refused(checkpoint: Path, content: str, detail: str) -> None:
    path = checkpoint / "loop.json"
    if content == "extra":
        content = json.dumps({**json.loads(path.read_text()), "surprise": 1})
    elif ":" in content and not content.startswith("{"):
        key, value = content.split(":", 1)
        content = json.dumps({**json.loads(path.read_text()), key: json.loads(value)})
    path.write_text(content)
    with pytest.raises(TsuikaError, match=_damaged("loop.json", re.escape(detail))):
        load_checkpoint(checkpoint)


def test_non_finite_loop_values_still_load(checkpoint: Path) -> None:
    # json.dumps writes a NaN loss as `NaN`: a diverged run's checkpoint is not damaged.
    path = checkpoint / "loop.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "best_loss": float("nan")}))
    loop = load_checkpoint(checkpoint)[0]
    assert loop.best_loss != loop.best_loss
