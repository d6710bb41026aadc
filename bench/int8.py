"""The int8 copy of the demo run, quantised five ways by ONNX Runtime, judged by the task:
accuracy on the run's own validation and test splits, and seconds over the test split.

    python bench/int8.py [--repeats 2]

Trains the demo run (MiniLM-L6 transfer, 256 reviews per class) in a temporary folder,
exports its float32 ONNX graph, and quantises it dynamically with uint8 or int8 weights,
per tensor or per channel, and int8 in 7 bits (`reduce_range`).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

import tsuika
from tsuika.export import export
from tsuika.export.int8_check import graph_predictions, run_splits
from tsuika.finished_run import load

# Benches time cold runs: no frozen pass is read from the activation store.
os.environ.setdefault("TSUIKA_ACTIVATIONS", "off")

VARIANTS = {
    "float32": None,
    "int8, 8-bit, per tensor (u8s8)": dict(weight_type=QuantType.QInt8),
    "int8, 7-bit (reduce_range)": dict(weight_type=QuantType.QInt8, reduce_range=True),
    "int8, 8-bit, per channel": dict(weight_type=QuantType.QInt8, per_channel=True),
    "uint8 (u8u8), per tensor: the export's": dict(weight_type=QuantType.QUInt8),
    "uint8, per channel": dict(weight_type=QuantType.QUInt8, per_channel=True),
}


def cpu() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), ""
    )
    flags = [f for f in ("avx512f", "avx512_vnni", "avx_vnni", "avx2") if f" {f} " in info]
    return f"{model or platform.processor()} ({', '.join(flags)})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"# bench/int8.py · {time.strftime('%Y-%m-%d')} · {cpu()}")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        trained = tsuika.train(
            model="minilm-l6", method="transfer", output=str(root / "runs"), progress=False,
            data={"train": "bundled:reviews", "k": 256}, report=False,
        )  # fmt: skip
        fp32 = export(trained.path, "onnx", root / "onnx") / "model.onnx"
        run = load(trained.path)
        splits, problem = run_splits(run)
        assert problem is None, problem
        prepared = root / "prepared.onnx"
        quant_pre_process(fp32, prepared, skip_symbolic_shape=True)
        for index, (name, options) in enumerate(VARIANTS.items()):
            path = fp32
            if options is not None:
                path = root / f"variant{index}.onnx"
                quantize_dynamic(prepared, path, **options)
            scores = {}
            for split, examples in splits.items():
                predicted = graph_predictions(path, run.model, run.task, examples)
                scores[split] = run.task.test_metrics(run.task.truth(examples), predicted)
            seconds = min(
                timed(lambda p=path: graph_predictions(p, run.model, run.task, splits["test"]))
                for _ in range(args.repeats)
            )
            shown = ", ".join(f"{s} {m['accuracy']:.4f}" for s, m in scores.items())
            print(f"{name}: accuracy {shown}; test split {seconds:.2f} s", flush=True)


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
