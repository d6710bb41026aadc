"""Shared by bench/distill_text.py and bench/distill_images.py: latency of a run's model in
PyTorch and of its ONNX export in ONNX Runtime (fp32 and int8), on the same inputs, and the
int8 graph's accuracy."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

# Benches time cold runs: no frozen pass is read from the activation store.
os.environ.setdefault("TSUIKA_ACTIVATIONS", "off")


def latencies(run, folder: Path, inputs: list) -> dict:
    """Median forward time (ms) in PyTorch (tsuika's model), ONNX Runtime fp32 and int8, on
    the same preprocessed batches (tokenising / resizing excluded everywhere): batch 1 over
    up to 16 inputs, batch 64 five times."""
    model = run.model.eval()
    preprocess = model.preprocess
    singles = [preprocess.collate(preprocess.encode([item])) for item in inputs[:16]]
    full = preprocess.collate(preprocess.encode([inputs[i % len(inputs)] for i in range(64)]))
    sessions = {
        "ort": session(folder / "model.onnx"),
        "int8": session(folder / "model.int8.onnx"),
    }
    result = {}
    with torch.no_grad():
        for size, batches in ((1, singles), (64, [full] * 5)):
            model(batches[0])  # warm-up
            result["torch", size] = median_ms(model, batches)
            for engine, sess in sessions.items():
                sess.run(None, ort_inputs(sess, batches[0]))
                result[engine, size] = median_ms(
                    lambda b, s=sess: s.run(None, ort_inputs(s, b)), batches
                )
    return result


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_inputs(sess: ort.InferenceSession, batch: dict) -> dict:
    def cast(tensor: torch.Tensor) -> np.ndarray:
        array = tensor.contiguous().numpy()
        return array.astype(np.float32 if array.dtype.kind == "f" else np.int64)

    return {i.name: cast(batch[i.name]) for i in sess.get_inputs()}


def median_ms(call, batches) -> float:
    times = []
    for batch in batches:
        started = time.perf_counter()
        call(batch)
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def onnx_accuracy(run, path: Path, inputs: list, labels: list[str], key=len) -> float:
    """Accuracy of an ONNX graph on `inputs` with their true `labels` (batches of 64, sorted
    by `key` so text batches carry little padding)."""
    sess = session(path)
    preprocess = run.model.preprocess
    names = run.labels
    order = sorted(range(len(inputs)), key=lambda i: key(inputs[i]))
    correct = 0
    for start in range(0, len(order), 64):
        chunk = order[start : start + 64]
        batch = preprocess.collate(preprocess.encode([inputs[i] for i in chunk]))
        logits = sess.run(None, ort_inputs(sess, batch))[0]
        correct += sum(
            names[int(p)] == labels[i] for p, i in zip(logits.argmax(-1), chunk, strict=True)
        )
    return correct / len(inputs)


def print_latencies(rows: dict) -> None:
    print("\nlatency, ms (median; batch 1 over 16 test inputs, batch 64 of test inputs)")
    print(
        f"{'':10}{'PyTorch b1':>12}{'ORT b1':>10}{'int8 b1':>10}"
        f"{'PyTorch b64':>13}{'ORT b64':>10}{'int8 b64':>10}"
    )
    for name, row in rows.items():
        print(
            f"{name:10}{row['torch', 1]:12.2f}{row['ort', 1]:10.2f}{row['int8', 1]:10.2f}"
            f"{row['torch', 64]:13.1f}{row['ort', 64]:10.1f}{row['int8', 64]:10.1f}"
        )
    t, s = rows["teacher"], rows["student"]
    for engine in ("torch", "ort", "int8"):
        print(
            f"speed-up student vs teacher, {engine}: batch 1 {t[engine, 1] / s[engine, 1]:.2f}×, "
            f"batch 64 {t[engine, 64] / s[engine, 64]:.2f}×"
        )
    for name, row in rows.items():
        print(
            f"{name}: ONNX Runtime vs tsuika's PyTorch, batch 1 "
            f"{row['torch', 1] / row['ort', 1]:.2f}× (fp32), "
            f"{row['torch', 1] / row['int8', 1]:.2f}× (int8); batch 64 "
            f"{row['torch', 64] / row['ort', 64]:.2f}×, {row['torch', 64] / row['int8', 64]:.2f}×"
        )


def print_runs(teacher, student, seconds: dict) -> None:
    """Accuracy, size and the distillation gain from the student run's summary."""
    summary = student.summary
    kd = summary["distillation"]
    undistilled = summary["baselines"]["undistilled"]
    gain = undistilled["gain"]
    n = summary["data"]
    print(
        f"data: {n['train']} train / {n['validation']} validation / {n['test']} test; teacher "
        f"run {seconds['teacher']:.0f} s, student run {seconds['student']:.0f} s (distilled "
        f"fit {summary['timings']['fit']:.0f} s, baselines {summary['timings']['baselines']:.0f} s)"
    )
    for side in ("teacher", "student"):
        row = kd[side]
        print(
            f"{side:8} {row['blocks'] or '-':>2} blocks  accuracy {row['accuracy']:.4f}  "
            f"{row['parameters'] / 1e6:.2f}M parameters  {row['model_bytes'] / 2**20:.1f} MB"
        )
    print(
        f"retained {kd['retained_percent']:.1f} % of the teacher's accuracy; size "
        f"{100 * kd['size_ratio']:.0f} %; tsuika's own latency measure: "
        f"{kd['speedup_batch1']:.2f}× at batch 1, {kd['speedup_batch64']:.2f}× at batch 64"
    )
    print(
        f"same student on the labels alone: accuracy {undistilled['accuracy']:.4f}; "
        f"distillation gain {100 * gain['gain']:+.1f} points "
        f"(95% CI {100 * gain['low']:+.1f} to {100 * gain['high']:+.1f})"
    )
