"""`--format onnx`: one graph from token ids (or pixels) to the task's output — opset 18,
dynamic batch (and sequence) axes — checked in ONNX Runtime against tsuika's own outputs
before it is kept. `--int8` adds a copy with int8 weights (`quantize_dynamic`): about twice
as fast on a CPU for MiniLM. Its outputs' distance from float32 is reported; the copy is kept
only if the run's own metric on its validation and test splits stays within a point
(`int8_check`)."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

from tsuika.export.graph import (
    Outputs,
    Written,
    check_batches,
    compared,
    encoder_task,
    input_names,
    is_image,
    literal,
    merge_adapters,
    onnx_outputs,
    output_name,
    pixels_code,
    predict_code,
    preprocessing,
    reference,
    targets,
    tokenize_code,
)
from tsuika.export.int8_check import task_check
from tsuika.finished_run import Run
from tsuika.models.base import AdaptableModel, State
from tsuika.tasks.base import Task
from tsuika.tasks.classify import Classify

OPSET = 18
MODEL = "model.onnx"
INT8 = "model.int8.onnx"


def write_onnx(
    run: Run, folder: Path, name: str, int8: bool = False, tolerance: float | None = None
) -> Written:
    """model.onnx (adapters merged), the tokenizer for text, and what export.json says."""
    model, task = run.model, encoder_task(run.task, "onnx")
    batches = check_batches(model)
    expected = reference(model, task, batches)  # before merging: the run as it was trained
    merge_adapters(model)
    trace(model, task, batches[-1], folder / MODEL)
    got = onnx_outputs(folder / MODEL, model, batches)
    check = compared(expected, got, "the ONNX graph in ONNX Runtime")
    description: dict[str, Any] = {
        "format": "onnx",
        "file": MODEL,
        "opset": OPSET,
        "inputs": graph_inputs(model),
        "outputs": [{"name": output_name(task), "shape": ["batch", int(expected[0].shape[1])]}],
        **targets(task),
        **preprocessing(model),
        "check": {"runtime": f"onnxruntime {onnxruntime.__version__}, CPU", **check},
    }
    if not is_image(model):
        model.preprocess.tokenizer.save_pretrained(folder)
    kept = False
    if int8:
        description["int8"] = quantised(folder, model, task, batches, got)
        description["int8"]["task"] = task_check(
            run, model, task, folder / MODEL, folder / INT8, tolerance
        )
        kept = description["int8"]["task"]["kept"]
        if not kept:  # the export goes on in float32; `export` then says why, exit 2
            (folder / INT8).unlink()
            description["int8"]["file"] = None
    return Written(description, usage(model, task, name, kept))


def dynamic_axes(model: AdaptableModel, task: Task) -> dict[str, dict[int, str]]:
    axes = {"batch"} if is_image(model) else {"batch", "sequence"}
    named = {0: "batch", 1: "sequence"}
    shapes = {name: {i: a for i, a in named.items() if a in axes} for name in input_names(model)}
    return {**shapes, output_name(task): {0: "batch"}}


def trace(model: AdaptableModel, task: Task, example: State, path: Path) -> None:
    """Export with the TorchScript tracer (`dynamo=False`): one second for MiniLM, where the
    dynamo exporter is slower and fails on some transformers code."""
    graph = Outputs(model, task).eval()
    args = tuple(example[name].contiguous() for name in graph.names)
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer's notes (legacy exporter; Python branches fixed at trace time — here the
        # mask, always given, decides them) are about code tsuika does not own.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "Constant folding", UserWarning)
        torch.onnx.export(
            graph,
            args,
            str(path),
            input_names=graph.names,
            output_names=[output_name(task)],
            dynamic_axes=dynamic_axes(model, task),
            opset_version=OPSET,
            dynamo=False,
        )


def graph_inputs(model: AdaptableModel) -> list[dict[str, Any]]:
    if is_image(model):
        size = model.spec["image"]["size"]
        return [{"name": "pixels", "dtype": "float32", "shape": ["batch", 3, size, size]}]
    return [
        {"name": name, "dtype": "int64", "shape": ["batch", "sequence"]}
        for name in input_names(model)
    ]


def quantised(
    folder: Path, model: AdaptableModel, task: Task, batches: list[State], fp32: list[np.ndarray]
) -> dict[str, Any]:
    """model.int8.onnx, and how far it moves the outputs on the check inputs (with, for
    classification, how often its top class is float32's)."""
    # Convolutions quantised dynamically run slower than float32 in ONNX Runtime on a CPU and
    # lose accuracy badly (measured on EfficientNet-Lite0: 0.22× the speed, accuracy 0.690 →
    # 0.459; bench/RESULTS.md): an image model's int8 copy quantises its matrix products only.
    ops = ["MatMul", "Gemm"] if is_image(model) else None
    with tempfile.TemporaryDirectory() as scratch:
        # ONNX Runtime's recommended pre-processing (shapes, constant folding); its symbolic
        # shape inference gives up on transformer graphs, and ONNX's own suffices here.
        prepared = Path(scratch) / MODEL
        quant_pre_process(folder / MODEL, prepared, skip_symbolic_shape=True)
        # The file may run on any CPU. ONNX Runtime's u8s8 kernels (int8 weights) add pairs
        # of products in 16 bits on x86 without VNNI, which saturates (its quantisation
        # guide; measured on an AVX2 EPYC: outputs moved by 0.545 where a VNNI CPU moved them
        # by 0.019); 7-bit weights (`reduce_range`) cannot saturate but lost 3.0 accuracy
        # points on the MiniLM demo. uint8 weights run the u8u8 kernels, which do not
        # saturate on any CPU: on the demo −0.3 points on test, +0.8 on validation, 1.37×
        # float32's speed on a VNNI EPYC (int8 weights: 2.3×, −0.85 to −1.45; RESULTS).
        quantize_dynamic(
            prepared,
            folder / INT8,
            weight_type=QuantType.QUInt8,
            op_types_to_quantize=ops,
        )
    got = onnx_outputs(folder / INT8, model, batches)
    report: dict[str, Any] = {
        "file": INT8,
        "quantised_ops": ops or "all that onnxruntime quantises dynamically",
        "weights": "uint8 (ONNX Runtime's u8u8 kernels: no saturation on any x86 CPU)",
        "max_abs_diff_vs_fp32": max(
            float(np.abs(a - b).max()) for a, b in zip(fp32, got, strict=True)
        ),
    }
    if isinstance(task, Classify):
        cuts = np.cumsum(task.sizes)[:-1]
        same = [
            (x.argmax(-1) == y.argmax(-1)).astype(float)
            for a, b in zip(fp32, got, strict=True)
            for x, y in zip(np.split(a, cuts, -1), np.split(b, cuts, -1), strict=True)
        ]
        report["top_class_agreement"] = float(np.concatenate(same).mean())
    return report


def usage(model: AdaptableModel, task: Task, name: str, int8: bool) -> str:
    """The card's section: what the files are, and code (onnxruntime, plus transformers for
    the tokenizer or torchvision for the pixels) that reproduces `Run.predict`."""
    inputs, shapes = "token ids", "any batch size and length"
    if is_image(model):
        inputs, shapes = "normalised pixels", "any batch size"
    int8_file = ""
    if int8:
        which = "its matrix products' weights in int8" if is_image(model) else "int8 weights"
        int8_file = f" `model.int8.onnx` is the same graph with {which}."
    return (
        f"`model.onnx` maps {inputs} to the run's {output_name(task)} (opset {OPSET}, {shapes}); "
        f"`export.json` lists its inputs, outputs, labels and preprocessing.{int8_file}\n\n"
        f"```python\n{onnx_code(model, task, name)}```\n"
    )


SESSION = (
    "session = onnxruntime.InferenceSession(\n"
    '    f"{folder}/model.onnx", providers=["CPUExecutionProvider"]\n'
    ")\n"
)


def onnx_code(model: AdaptableModel, task: Task, name: str) -> str:
    if is_image(model):
        head = (
            "import onnxruntime\n"
            "import torch\n"
            "from PIL import Image\n"
            "from torchvision.transforms import v2\n\n"
            f"folder = {literal(name)}  # this folder\n"
            + SESSION
            + pixels_code(model)
            + "\n\ndef outputs(paths):\n"
            '    return session.run(None, {"pixels": pixels(paths).numpy()})[0]\n'
        )
    else:
        head = (
            "import onnxruntime\n"
            "from transformers import AutoTokenizer\n\n"
            f"folder = {literal(name)}  # this folder\n"
            "tokenizer = AutoTokenizer.from_pretrained(folder)\n"
            + SESSION
            + "\n\ndef outputs(texts):\n"
            + tokenize_code(model, "np")
            + f"    names = {literal(input_names(model))}\n"
            '    return session.run(None, {n: batch[n].astype("int64") for n in names})[0]\n'
        )
    return head + "\n\n" + predict_code(task)
