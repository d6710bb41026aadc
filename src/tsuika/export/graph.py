"""What every export of an encoder run shares: the run's model as one function of plain
tensors, the inputs an export is checked on, adapters folded into plain weights, the check
itself, and the lines of code that turn outputs into predictions."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tsuika.errors import TsuikaError
from tsuika.model_kinds import IMAGE_ENCODER
from tsuika.models.base import AdaptableModel, State
from tsuika.tasks.base import Task
from tsuika.tasks.classify import Classify
from tsuika.tasks.regression import Regression

TOLERANCE = 1e-4
"""Largest difference allowed between an export's outputs and tsuika's, per unit of output
scale (the largest |output|, at least 1): float32 arithmetic in another order stays far
below it (measured ≤ 3e-7 on a tiny BERT and a tiny CNN), a wrong weight or layer does not."""


@dataclass
class Written:
    """What a format writer leaves besides its files: the content of export.json, and the
    model card's section on how to use the folder."""

    description: dict[str, Any]
    usage: str


def literal(value: str | list | dict) -> str:
    """A Python literal for strings, numbers, and lists and dicts of them, in the double
    quotes of formatted code (JSON's escapes are Python's too)."""
    return json.dumps(value, ensure_ascii=False)


def is_image(model: AdaptableModel) -> bool:
    return model.model_kind == IMAGE_ENCODER


def encoder_task(task: Task, format: str) -> Classify | Regression:
    """The tasks whose exports end in a plain output tensor (`export` has refused a task
    that declares no such export: `Task.export_forms`)."""
    if isinstance(task, Classify | Regression):
        return task
    raise TsuikaError(f"a {task.name} run has no {format} export: its outputs are not a tensor")


def input_names(model: AdaptableModel) -> list[str]:
    """The tensors the exported function takes, in order: what tsuika's preprocessing makes."""
    if is_image(model):
        return ["pixels"]
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in model.preprocess.tokenizer.model_input_names:
        names.append("token_type_ids")
    return names


def output_name(task: Task) -> str:
    return "prediction" if isinstance(task, Regression) else "logits"


def task_output(task: Task, outputs: State) -> torch.Tensor:
    """The output an export reproduces: logits [B, Σ classes] (the label columns' logits side
    by side), or a regression's prediction [B, 1] in the target's own unit."""
    if isinstance(task, Regression):
        return outputs["prediction"].float() * task.std + task.mean
    return outputs["logits"].float()


class Outputs(nn.Module):
    """The run's model as a function of plain tensors (`input_names` order) → `task_output`:
    what `torch.onnx.export` traces, and the reference every check compares with."""

    def __init__(self, model: AdaptableModel, task: Task) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.names = input_names(model)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return task_output(self.task, self.model(dict(zip(self.names, tensors, strict=True))))


def check_batches(model: AdaptableModel) -> list[State]:
    """Synthetic inputs of two batch sizes (1 and 5) and, for text, two lengths with padded
    rows: the dynamic axes and the attention mask are exercised, not just one shape. Drawn
    from a private generator, so exporting never moves the caller's random state."""
    generator = torch.Generator().manual_seed(0)
    if is_image(model):
        size = model.spec["image"]["size"]
        return [{"pixels": torch.randn(b, 3, size, size, generator=generator)} for b in (1, 5)]
    tokenizer = model.preprocess.tokenizer
    vocabulary = min(len(tokenizer), getattr(model.library.config, "vocab_size", len(tokenizer)))
    longest = model.spec.get("max_length", 128)
    batches = []
    for rows, length in ((1, min(5, longest)), (5, min(16, longest))):
        ids = torch.randint(0, vocabulary, (rows, length), generator=generator)
        mask = torch.ones_like(ids)
        for row in range(1, rows):  # every row after the first is shorter: padding to mask
            mask[row, length - row :] = 0
        ids[mask == 0] = model.preprocess.pad_id
        batch = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in input_names(model):
            batch["token_type_ids"] = torch.zeros_like(ids)
        batches.append(batch)
    return batches


def check_texts(model: AdaptableModel, count: int = 5) -> list[str]:
    """Texts of varied lengths decoded from random token ids (no special tokens), for checks
    that start from raw text."""
    generator = torch.Generator().manual_seed(0)
    tokenizer = model.preprocess.tokenizer
    special = set(tokenizer.all_special_ids)
    ordinary = [i for i in range(len(tokenizer)) if i not in special]
    texts = []
    for number in range(count):
        picks = torch.randint(0, len(ordinary), (3 + 4 * number,), generator=generator)
        texts.append(tokenizer.decode([ordinary[i] for i in picks]).strip() or "a")
    return texts


@torch.no_grad()
def reference(model: AdaptableModel, task: Task, batches: list[State]) -> list[np.ndarray]:
    graph = Outputs(model, task).eval()
    return [graph(*(batch[name] for name in graph.names)).numpy() for batch in batches]


def merge_adapters(model: AdaptableModel) -> None:
    """Fold PEFT adapters into the weights they adapt (LoRA: W + (α/r)·BA), in place: the
    stages share the library's modules, so they run the plain, merged layers afterwards."""
    if model.adapters is None:
        return
    if model.adapters.active_peft_config.is_prompt_learning:
        raise TsuikaError(
            "a soft prompt is extra inputs, not a change of weights: it cannot be merged into "
            "the network; the run's model/adapter is the PEFT folder that loads it"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.adapters.merge_and_unload()
    object.__setattr__(model, "adapters", None)


def compared(expected: list[np.ndarray], got: list[np.ndarray], what: str) -> dict[str, Any]:
    """The largest difference between `got` and tsuika's `expected` outputs; more than the
    tolerance is an error (the export would not reproduce the run)."""
    difference = max(float(np.abs(e - g).max()) for e, g in zip(expected, got, strict=True))
    scale = max(1.0, max(float(np.abs(e).max()) for e in expected))
    allowed = TOLERANCE * scale
    if not difference <= allowed:  # also catches NaN
        raise TsuikaError(
            f"{what} differs from tsuika's own outputs by {difference:.3g} (allowed "
            f"{allowed:.1g}); nothing was exported — please report this model"
        )
    return {
        "max_abs_diff": difference,
        "tolerance": allowed,
        "examples": sum(len(e) for e in expected),
    }


def targets(task: Classify | Regression) -> dict[str, Any]:
    """What the output columns mean, for export.json."""
    if isinstance(task, Regression):
        return {
            "task": task.name,
            "column": task.column,
            "unit": "the target's own unit (the training mean and spread are folded in)",
        }
    return {"task": task.name, "labels": task.labels}


def image_settings(model: AdaptableModel) -> dict[str, Any]:
    """How pixels are made from an image: resize the short side, centre crop, scale to [0, 1],
    normalise (the pretrained model's own recipe)."""
    image = dict(model.spec["image"])
    image["resize"] = math.floor(image["size"] / image["crop_pct"])
    return image


def predict_code(task: Classify | Regression) -> str:
    """`predict(inputs)` from `outputs(inputs)`: labels (a dict of them for several label
    columns) or numbers, as tsuika's `Run.predict` gives. Works on numpy and torch alike."""
    if isinstance(task, Regression):
        return (
            "def predict(inputs):\n    return [float(value) for value in outputs(inputs)[:, 0]]\n"
        )
    if len(task.columns) == 1:
        return (
            f"labels = {literal(task.labels[task.columns[0]])}\n\n\n"
            "def predict(inputs):\n"
            "    return [labels[int(i)] for i in outputs(inputs).argmax(-1)]\n"
        )
    return (
        f"columns = {literal(task.labels)}\n\n\n"
        "def predict(inputs):\n"
        "    scores, start, chosen = outputs(inputs), 0, {}\n"
        "    for column, names in columns.items():  # each column's logits, side by side\n"
        "        best = scores[:, start : start + len(names)].argmax(-1)\n"
        "        chosen[column] = [names[int(i)] for i in best]\n"
        "        start += len(names)\n"
        "    return [dict(zip(chosen, row)) for row in zip(*chosen.values())]\n"
    )


def pixels_code(model: AdaptableModel) -> str:
    """`pixels(paths)`: image files → the normalised batch tsuika feeds the network."""
    image = image_settings(model)
    mode = image["interpolation"].upper()
    return (
        "preprocess = v2.Compose(\n"
        "    [\n"
        "        v2.PILToTensor(),\n"
        f"        v2.Resize({image['resize']}, v2.InterpolationMode.{mode}, antialias=True),\n"
        f"        v2.CenterCrop({image['size']}),\n"
        "        v2.ToDtype(torch.float32, scale=True),\n"
        f"        v2.Normalize({literal(list(image['mean']))}, {literal(list(image['std']))}),\n"
        "    ]\n"
        ")\n\n\n"
        "def pixels(paths):\n"
        '    return torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])\n'
    )


def preprocessing(model: AdaptableModel) -> dict[str, Any]:
    """How raw inputs become the input tensors, and what the network is, for export.json."""
    described: dict[str, Any] = {"base_model": model.spec.get("source")}
    if is_image(model):
        described["image"] = image_settings(model)
    else:
        described["text"] = {
            "max_length": model.spec.get("max_length", 128),
            "truncation": True,
            "padding_side": "right",
            "pooling": model.spec.get("pooling", "mean"),
            "normalize": bool(model.spec.get("normalize", False)),
        }
    if "keep_blocks" in model.spec:  # a distilled student: which of the teacher's blocks
        described["keep_blocks"] = model.spec["keep_blocks"]
    return described


def tokenize_code(model: AdaptableModel, tensors: str) -> str:
    """The tokenizer call tsuika makes (truncated to the run's length, padded on the right)."""
    return (
        "    batch = tokenizer(\n"
        "        texts,\n"
        "        padding=True,\n"
        '        padding_side="right",\n'
        "        truncation=True,\n"
        f"        max_length={model.spec.get('max_length', 128)},\n"
        f'        return_tensors="{tensors}",\n'
        "    )\n"
    )


def onnx_outputs(path: Path, model: AdaptableModel, batches: list[State]) -> list[np.ndarray]:
    """An ONNX graph's output for each batch, in ONNX Runtime on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = input_names(model)
    return [session.run(None, {n: batch[n].numpy() for n in names})[0] for batch in batches]
