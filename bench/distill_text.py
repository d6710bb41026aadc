"""Distillation on text: MiniLM-L6 fine-tuned on the bundled reviews (the teacher) → a 3-block
student built from it (blocks 1, 3, 6: DistilBERT's evenly spaced choice), trained with and
without the teacher; then both exported to ONNX.

    python bench/distill_text.py [--k N] [--teacher-epochs 3] [--student-epochs 4]

Prints teacher / student / undistilled-student accuracy on the 2,000 test reviews, accuracy
retained (%), parameters and sizes, latency at batch 1 and 64 in PyTorch (tsuika's forward)
and in ONNX Runtime (fp32 and int8) with the speed-ups, and the int8 graph's accuracy.
Targets (issue 15): ≥ 97 % of the teacher's accuracy retained, ≥ 1.8× faster at batch 64,
ONNX Runtime at batch 1 faster than tsuika's PyTorch path.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
from distill_common import latencies, onnx_accuracy, print_latencies, print_runs

import tsuika
from tsuika.data import tables
from tsuika.export import export

# Benches time cold runs: no frozen pass is read from the activation store.
os.environ.setdefault("TSUIKA_ACTIVATIONS", "off")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=None, help="labelled examples per class")
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--student-epochs", type=int, default=4)
    parser.add_argument("--blocks", default="1,3,6")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(
        f"# bench/distill_text.py · {time.strftime('%Y-%m-%d')} · {platform.machine()} · "
        f"torch {torch.__version__} · onnxruntime {ort.__version__} · "
        f"{torch.get_num_threads()} threads"
    )
    output = Path(tempfile.mkdtemp(prefix="distill-text-"))
    common = dict(
        model="minilm-l6",
        data={"train": "bundled:reviews", "k": args.k},
        output=str(output),
        progress=False,
        seed=args.seed,
        baselines={"classical": False, "probe": False},
    )
    seconds = {}
    started = time.perf_counter()
    teacher = tsuika.train(
        method="finetune",
        finetune={"freeze": 1},
        train={"epochs": args.teacher_epochs, "lr": 1e-3, "backbone_lr": 5e-5, "patience": 2},
        **common,
    )
    seconds["teacher"] = time.perf_counter() - started
    started = time.perf_counter()
    student = tsuika.train(
        method="distill",
        distill={"teacher": str(teacher.path), "blocks": [int(b) for b in args.blocks.split(",")]},
        train={"epochs": args.student_epochs, "backbone_lr": 1e-4, "patience": 2},
        **common,
    )
    seconds["student"] = time.perf_counter() - started
    print_runs(teacher, student, seconds)

    with open(tables.resolve("bundled:reviews", "test"), newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    texts = [row["text"] for row in rows]
    latency = {}
    for name, run in (("teacher", teacher), ("student", student)):
        folder = export(run.path, "onnx", output / f"{name}-onnx", int8=True)
        latency[name] = latencies(run, folder, texts)
    print_latencies(latency)
    labels = [row["label"] for row in rows]
    for name in ("model.onnx", "model.int8.onnx"):
        accuracy = onnx_accuracy(student, output / "student-onnx" / name, texts, labels)
        print(f"student {name} accuracy on the {len(texts)} test reviews: {accuracy:.4f}")
    print(f"peak resident memory {student.summary['memory']['peak_rss_mb']:.0f} MB; runs: {output}")


if __name__ == "__main__":
    main()
