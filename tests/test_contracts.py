"""The contract-test matrix: every method × tiny model × task (as peft's
`test_only_params_are_updated`). For every cell: only the parameters the method declares
change; save → load reproduces the outputs exactly; resuming from a checkpoint reproduces an
uninterrupted run; and the precomputed (cached) run equals the uncached one.

The cells are built from the registries (issue 32, item 5): every method in `METHODS` meets
every task in `TASKS` whose kind of model it declares (and that its `tasks` admits), on every
tiny model of that kind — text-to-image included. A property a cell does not check is in
`EXCLUDED` with the reason; a registered method or task with neither a cell nor an exclusion
fails `test_every_registered_method_and_task_is_in_the_matrix`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import TINY_CNN, chat_rows, colour_table, register_tiny_models, text_table
from PIL import Image
from test_concepts import CLASSES, tiny_pipeline

import tsuika
from tsuika.api import task_and_data
from tsuika.config import build_config
from tsuika.methods import METHODS
from tsuika.model_kinds import in_order, kinds_in_words
from tsuika.models.judge import ImageJudge
from tsuika.tasks import TASKS
from tsuika.train.loop import Loop
from tsuika.train.phase import run_phase, seed_everything
from tsuika.train.progress import Progress

TARGETS = {  # task → its label column(s) in the synthetic tables
    "classify": "label",
    "multi-task": ["label", "group"],
    "regression": "score",
}
TEXT_TARGETS = {**TARGETS, "multi-task": ["label", "topic"]}

TINY_MODELS = {  # tiny model → its kind of model (`tsuika.model_kinds`)
    "tiny-bert": "text-encoder",
    "tiny-cnn": "image-encoder",
    "tiny-llama": "causal-lm",
    "tiny-diffusion": "text-to-image",
}
PROPERTIES = ("declared-parameters", "save-load", "resume", "cache")

EXCLUDED: dict[tuple[str, str, str], str] = {
    ("textual-inversion", "text-to-image", "cache"): (
        "it trains the text encoder, the first stage of a pixel-space model, so nothing before "
        "it is frozen to cache (test_concepts checks that a forced cache is refused)"
    ),
}
"""(method, task or kind of model, property) → why the matrix does not check that there."""


def _admits(method: str, task: str) -> bool:
    return METHODS[method].tasks is None or task in METHODS[method].tasks


def _combinations() -> list[tuple[str, str, str]]:
    """(method, task, kind of model) for every kind the method and the task both declare,
    where the method trains the task."""
    return [
        (method, task, kind)
        for task in TASKS
        for method in METHODS
        if _admits(method, task)
        for kind in in_order(TASKS[task].model_kinds & METHODS[method].model_kinds)
    ]


def _excluded(method: str, task: str, kind: str, prop: str) -> bool:
    return (method, task, prop) in EXCLUDED or (method, kind, prop) in EXCLUDED


CELLS = [
    (method, model, task)
    for method, task, kind in _combinations()
    for model, its_kind in TINY_MODELS.items()
    if its_kind == kind
]


def cells(prop: str) -> list[tuple[str, str, str]]:
    """The cells that check `prop`."""
    return [
        (method, model, task)
        for method, model, task in CELLS
        if not _excluded(method, task, TINY_MODELS[model], prop)
    ]


def matrix_gaps() -> list[str]:
    """What the registries hold that no cell checks and no exclusion explains: a method or a
    task that meets no other part, a method × task × kind of model without a cell for a
    property (no tiny model of that kind here), an exclusion that excludes nothing."""
    combinations = _combinations()
    gaps = [
        f"method {method} adapts no registered task's kind of model"
        for method in METHODS
        if all(method != m for m, _, _ in combinations)
    ]
    gaps += [
        f"task {task} is trained by no method"
        for task in TASKS
        if all(task != t for _, t, _ in combinations)
    ]
    for prop in PROPERTIES:
        checked = {(method, task, TINY_MODELS[model]) for method, model, task in cells(prop)}
        gaps += [
            f"{method} × {task} on {kinds_in_words([kind], article=True)} model has no "
            f"`{prop}` cell and no exclusion (a tiny {kind} model in TINY_MODELS gives it one)"
            for method, task, kind in combinations
            if (method, task, kind) not in checked and not _excluded(method, task, kind, prop)
        ]
    for method, part, prop in EXCLUDED:
        names_a_cell = any(
            method == m and part in (task, TINY_MODELS[model]) for m, model, task in CELLS
        )
        if prop not in PROPERTIES or not names_a_cell:
            gaps.append(f"EXCLUDED{(method, part, prop)} excludes no cell")
    return gaps


def test_every_registered_method_and_task_is_in_the_matrix() -> None:
    assert matrix_gaps() == []


def test_a_new_part_the_matrix_does_not_cover_is_a_gap(monkeypatch) -> None:
    """Parts registered (as a plugin's would be) without a tiny model of their kind: a task
    and a method on a new kind, a method that meets no task, and a new kind of model added to
    a task and a method that already have cells on the other kinds — every property of each
    uncovered combination is a gap."""

    class Detect:
        model_kinds = frozenset({"detector"})

    class Boxes:
        model_kinds, tasks = frozenset({"detector"}), None

    class Lonely:
        model_kinds, tasks = frozenset({"point-cloud"}), None

    monkeypatch.setitem(TASKS, "detect", Detect)
    monkeypatch.setitem(METHODS, "boxes", Boxes)
    monkeypatch.setitem(METHODS, "lonely", Lonely)
    for part in (TASKS["regression"], METHODS["transfer"]):
        monkeypatch.setattr(part, "model_kinds", part.model_kinds | {"audio-encoder"})
    gaps = matrix_gaps()
    assert gaps[0] == "method lonely adapts no registered task's kind of model"
    assert gaps[1:] == [
        f"{pair} on {a} {kind} model has no `{prop}` cell and no exclusion (a tiny {kind} "
        "model in TINY_MODELS gives it one)"
        for prop in PROPERTIES
        for pair, a, kind in (
            ("transfer × regression", "an", "audio-encoder"),
            ("boxes × detect", "a", "detector"),
        )
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
        "tiny-diffusion": _tiny_diffusion(root / "tiny-diffusion"),
        "concept": _concept_pictures(root / "concept" / "sneaker"),
        "teachers": root / "teachers",
    }


def _tiny_diffusion(folder: Path) -> Path:
    """test_concepts' tiny pixel-space pipeline as a diffusers folder, with a (random) judge of
    its classes, so that the concept methods' evidence is computed too."""
    tiny_pipeline().save_pretrained(folder, safe_serialization=True)
    torch.manual_seed(0)
    ImageJudge(CLASSES, 8).save(folder / "judge")
    return folder


def _concept_pictures(folder: Path) -> Path:
    """Three noise pictures of the concept (the folder's name is the judge's class)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


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
    kind = {"tiny-bert": "text", "tiny-cnn": "image", "tiny-llama": "chat"}.get(model)
    source = {"tiny-bert": str(tiny_bert_dir), "tiny-cnn": TINY_CNN}
    tree = {
        "model": source.get(model) or str(tables[model]),
        "method": method,
        "task": task,
        "data": {"train": str(tables[kind or "concept"])},
        # A frozen prefix, so the cache has something to hold: fine-tuning freezes the first
        # group, adapters sit in the top group only.
        "finetune": {"freeze": 1},
        "adapter": {"blocks": 1, "lr": 0.01},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "backbone_lr": 0.01},
        "baselines": {"scratch": False, "bootstrap": 100},
        "output": str(output),
        "progress": False,
    }
    if kind in ("text", "image"):
        tree["data"]["label_column"] = (TEXT_TARGETS if kind == "text" else TARGETS)[task]
    if model == "tiny-diffusion":
        tree.update(_concept_settings())
        # 3 pictures × 2 repeats (+ 2 class pictures for DreamBooth's prior) in batches of 4:
        # 2 steps an epoch, enough to interrupt the third epoch after a mid-run checkpoint.
        # The last epoch's weights: the random judge's fidelity ties, and the best epoch
        # could be the first, which no interruption reaches.
        tree["train"].update(batch_size=4, select="last")
    if method == "distill":  # the tiny CNN has no blocks to drop: its student is itself
        student = "teacher" if model == "tiny-bert" else TINY_CNN
        teacher = _teacher(cell, tiny_bert_dir, tables)
        tree["distill"] = {"teacher": teacher, "student": student, "undistilled": False}
    for key, value in extra.items():
        tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
    return build_config(tree)


def _concept_settings() -> dict:
    """A text-to-image run as cheap as test_concepts': 2 sampling steps, 2 pictures a prompt."""
    diffusion = {"class_word": "shoe", "eval_images": 2, "val_images": 2, "sample_steps": 2}
    return {
        "diffusion": {**diffusion, "repeats": 2, "lr": 1e-2},
        "dreambooth": {"class_images": 2},
    }


def _ids(cell: tuple[str, str, str]) -> str:
    return "-".join(cell)


@pytest.mark.parametrize("cell", cells("declared-parameters"), ids=_ids)
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
        run_phase(model, method, splits, config, progress, "matrix")
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "nothing trained"
    assert changed <= set(declared), sorted(changed - set(declared))[:3]
    if task.new_head:  # a new head always trains; a pretrained LM head only if declared
        assert any(name.startswith(f"stages.{model.num_stages - 1}.") for name in changed)


@pytest.mark.parametrize("cell", cells("save-load"), ids=_ids)
def test_save_then_load_reproduces_the_outputs(cell, tiny_bert_dir, tables, tmp_path) -> None:
    run = tsuika.train(_config(cell, tiny_bert_dir, tables, tmp_path))
    assert (run.path / "report.html").is_file()
    loaded = tsuika.load(run.path)
    assert loaded.task.to_meta() == run.task.to_meta()
    for key, value in _outputs(run, cell, tables).items():
        assert torch.equal(_outputs(loaded, cell, tables)[key], value), key
    if cell[1] != "tiny-diffusion":  # a text-to-image run generates; it predicts no label
        inputs = _inputs(cell, tables)
        assert loaded.predict(inputs) == run.predict(inputs)


def _inputs(cell, tables) -> list[str]:
    if cell[1] == "tiny-bert":
        return ["a good film", "the dull plot was boring", "music"]
    if cell[1] == "tiny-llama":
        return ["say pos or neg : a good film", "say pos or neg : dull", "music"]
    return [str(tables["image"].parent / f"{i}.png") for i in range(3)]


def _outputs(run: tsuika.Run, cell, tables) -> dict[str, torch.Tensor]:
    if cell[1] == "tiny-diffusion":
        return _concept_outputs(run)
    return run.outputs(_inputs(cell, tables))


def _concept_outputs(run: tsuika.Run) -> dict[str, torch.Tensor]:
    """What a text-to-image run makes of its concept's prompt: pictures, and — as pictures
    are clipped to [0, 1], which can hide a difference — the denoiser's raw prediction for
    fixed pixels, noise and timesteps."""
    model, prompt = run.model, run.task.to_meta()["prompt"]
    size, channels = model.preprocess.size, model.preprocess.channels
    generator = torch.Generator().manual_seed(0)
    state = {
        "input_ids": model.preprocess.token_ids([prompt, prompt]),
        "pixels": torch.rand(2, channels, size, size, generator=generator) * 2 - 1,
        "noise": torch.randn(2, channels, size, size, generator=generator),
        "u": torch.tensor([0.2, 0.7]),
    }
    model.eval()
    with torch.no_grad():
        prediction = model(state, 0)["prediction"]
    return {"images": run.images(prompt, n=2), "prediction": prediction}


@pytest.mark.parametrize("cell", cells("resume"), ids=_ids)
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
    for key, value in _outputs(whole, cell, tables).items():
        # Measured 2026-11-25: max |difference| 0.0 in every cell.
        assert torch.allclose(_outputs(resumed, cell, tables)[key], value, atol=1e-6), key


@pytest.mark.parametrize("cell", cells("cache"), ids=_ids)
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
    for key, value in _outputs(cached, cell, tables).items():
        # Measured 2026-11-25: max |difference| 0.0 in every cell (the cached activations are
        # the same numbers); the tolerance leaves room for other BLAS builds.
        assert torch.allclose(_outputs(plain, cell, tables)[key], value, atol=1e-6), key
