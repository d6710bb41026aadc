"""The contract-test matrix: every method × tiny model × task (as peft's
`test_only_params_are_updated`). For every cell: only the parameters the method declares
change; save → load reproduces the outputs exactly; resuming from a checkpoint reproduces an
uninterrupted run; and the precomputed (cached) run equals the uncached one. A new method or
task registered in `METHODS` / `TASKS` gets the whole matrix."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from builders import TINY_CNN, chat_rows, colour_table, register_tiny_models, text_table

import tsuika
from tsuika.api import task_and_data
from tsuika.config import build_config
from tsuika.methods import METHODS
from tsuika.tasks import TASKS
from tsuika.train.loop import Loop
from tsuika.train.metrics_log import MetricsLog
from tsuika.train.phase import run_phase, seed_everything
from tsuika.train.progress import Progress

TARGETS = {  # task → its label column(s) in the synthetic tables
    "classify": "label",
    "multi-task": ["label", "group"],
    "regression": "score",
}
TEXT_TARGETS = {**TARGETS, "multi-task": ["label", "topic"]}
ENCODER_TASKS = [name for name, task in TASKS.items() if task.model_kind == "encoder"]
LM_TASKS = [name for name, task in TASKS.items() if task.model_kind == "causal-lm"]


def _trains(method: str, task: str) -> bool:
    return METHODS[method].tasks is None or task in METHODS[method].tasks


CELLS = [
    (method, model, task)
    for method, model, task in itertools.product(METHODS, ["tiny-bert", "tiny-cnn"], ENCODER_TASKS)
    if "encoder" in METHODS[method].model_kinds and _trains(method, task)
]
CELLS += [
    (method, "tiny-llama", task)
    for method, task in itertools.product(METHODS, LM_TASKS)
    if "causal-lm" in METHODS[method].model_kinds and _trains(method, task)
]


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir) -> dict[str, Path]:
    register_tiny_models()
    root = tmp_path_factory.mktemp("matrix")
    chat = root / "chat.jsonl"
    chat.write_text("".join(json.dumps(row) + "\n" for row in chat_rows(48)))
    return {
        "text": text_table(root / "text.csv", n=48),
        "image": colour_table(root / "img", 48),
        "chat": chat,
        "tiny-llama": tiny_llama_dir,
        "teachers": root / "teachers",
    }


def _teacher(cell: tuple[str, str, str], tiny_bert_dir: Path, tables) -> str:
    """A finished transfer run of the cell's model and task, trained once per module, as
    `distill`'s teacher."""
    _, model, task = cell
    folder = tables["teachers"] / f"{model}-{task}"
    if not folder.is_dir():
        config = _config(("transfer", model, task), tiny_bert_dir, tables, tables["teachers"])
        tsuika.train(config.model_copy(update={"name": folder.name}))
    return str(folder)


def _config(cell: tuple[str, str, str], tiny_bert_dir: Path, tables, output: Path, **extra):
    method, model, task = cell
    kind = {"tiny-bert": "text", "tiny-cnn": "image", "tiny-llama": "chat"}[model]
    source = {"tiny-bert": str(tiny_bert_dir), "tiny-cnn": TINY_CNN}
    tree = {
        "model": source.get(model) or str(tables[model]),
        "method": method,
        "task": task,
        "data": {"train": str(tables[kind])},
        # A frozen prefix, so the cache has something to hold: fine-tuning freezes the first
        # group, adapters sit in the top group only.
        "finetune": {"freeze": 1},
        "adapter": {"blocks": 1, "lr": 0.01},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "backbone_lr": 0.01},
        "baselines": {"scratch": False, "bootstrap": 100},
        "output": str(output),
        "progress": False,
    }
    if kind != "chat":
        tree["data"]["label_column"] = (TEXT_TARGETS if kind == "text" else TARGETS)[task]
    if method == "distill":  # the tiny CNN has no blocks to drop: its student is itself
        student = "teacher" if model == "tiny-bert" else TINY_CNN
        teacher = _teacher(cell, tiny_bert_dir, tables)
        tree["distill"] = {"teacher": teacher, "student": student, "undistilled": False}
    for key, value in extra.items():
        tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
    return build_config(tree)


def _ids(cell: tuple[str, str, str]) -> str:
    return "-".join(cell)


@pytest.mark.parametrize("cell", CELLS, ids=_ids)
def test_only_declared_parameters_change(cell, tiny_bert_dir, tables, tmp_path) -> None:
    config = _config(cell, tiny_bert_dir, tables, tmp_path)
    seed_everything(0)
    config = METHODS[config.method].configured(config)
    task, splits = task_and_data(config)
    method = METHODS[config.method](config, task)
    model = method.build_model(config)
    method.prepare(model)
    declared = method.trainable_parameters(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with Progress(False) as progress:
        run_phase(model, method, splits, config, progress, MetricsLog(None), "matrix")
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "nothing trained"
    assert changed <= set(declared), sorted(changed - set(declared))[:3]
    if task.new_head:  # a new head always trains; a pretrained LM head only if declared
        assert any(name.startswith(f"stages.{model.num_stages - 1}.") for name in changed)


@pytest.mark.parametrize("cell", CELLS, ids=_ids)
def test_save_then_load_reproduces_the_outputs(cell, tiny_bert_dir, tables, tmp_path) -> None:
    run = tsuika.train(_config(cell, tiny_bert_dir, tables, tmp_path))
    assert (run.path / "report.html").is_file()
    inputs = _inputs(cell, tables)
    loaded = tsuika.load(run.path)
    assert loaded.task.to_meta() == run.task.to_meta()
    for key, value in run.outputs(inputs).items():
        assert torch.equal(loaded.outputs(inputs)[key], value), key
    assert loaded.predict(inputs) == run.predict(inputs)


def _inputs(cell, tables) -> list[str]:
    if cell[1] == "tiny-bert":
        return ["a good film", "the dull plot was boring", "music"]
    if cell[1] == "tiny-llama":
        return ["say pos or neg : a good film", "say pos or neg : dull", "music"]
    return [str(tables["image"].parent / f"{i}.png") for i in range(3)]


@pytest.mark.parametrize("cell", CELLS, ids=_ids)
def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(
    cell, tiny_bert_dir, tables, tmp_path, monkeypatch
) -> None:
    # The report is written (and checked) by the save → load test of every cell.
    extra = {"train": {"epochs": 3, "checkpoint_every": 2}, "report": False}
    # A head solved in closed form takes no step to interrupt (test_transfer resumes one).
    extra["head"] = {"fit": "steps"}
    whole = tsuika.train(_config(cell, tiny_bert_dir, tables, tmp_path / "a", **extra))

    calls = {"n": 0}
    step = Loop._optimizer_step

    def interrupted_after_five(self) -> None:
        calls["n"] += 1
        if calls["n"] > 5:  # steps 1–5 done; a checkpoint was written at step 4
            raise KeyboardInterrupt
        step(self)

    monkeypatch.setattr(Loop, "_optimizer_step", interrupted_after_five)
    with pytest.raises(KeyboardInterrupt):
        tsuika.train(_config(cell, tiny_bert_dir, tables, tmp_path / "b", name="r", **extra))
    monkeypatch.setattr(Loop, "_optimizer_step", step)
    resumed = tsuika.train(resume=tmp_path / "b" / "r")

    assert (
        resumed.summary["training"]["optimizer_steps"]
        == whole.summary["training"]["optimizer_steps"]
    )
    inputs = _inputs(cell, tables)
    for key, value in whole.outputs(inputs).items():
        # Measured 2026-11-25: max |difference| 0.0 in every cell.
        assert torch.allclose(resumed.outputs(inputs)[key], value, atol=1e-6), key


@pytest.mark.parametrize("cell", CELLS, ids=_ids)
def test_cache_on_and_off_give_the_same_model(cell, tiny_bert_dir, tables, tmp_path) -> None:
    cached = tsuika.train(_config(cell, tiny_bert_dir, tables, tmp_path / "on", report=False))
    plain = tsuika.train(
        _config(cell, tiny_bert_dir, tables, tmp_path / "off", train={"cache": "off"}, report=False)
    )
    config = _config(cell, tiny_bert_dir, tables, tmp_path / "x")
    config = METHODS[config.method].configured(config)
    task, _ = task_and_data(config)
    method = METHODS[config.method](config, task)
    model = method.build_model(config)
    method.prepare(model)
    cacheable = method.cache_boundary(model) > 0  # prompt-tuning trains the first stage
    assert (cached.summary["timings"].get("cache", 0) > 0) == cacheable  # the cache really ran
    assert "cache" not in plain.summary["timings"]
    inputs = _inputs(cell, tables)
    for key, value in cached.outputs(inputs).items():
        # Measured 2026-11-25: max |difference| 0.0 in every cell (the cached activations are
        # the same numbers); the tolerance leaves room for other BLAS builds.
        assert torch.allclose(plain.outputs(inputs)[key], value, atol=1e-6), key
