"""Distillation on images: EfficientNet-Lite0 fine-tuned on the bundled Fashion-MNIST sample
(the teacher) → a student built from it that keeps 10 of its 16 MBConv blocks (each stage's
first block and half of its repeated ones, evenly spaced), trained with and without the
teacher; then both exported to ONNX.

    python bench/distill_images.py [--k 50] [--teacher-epochs 5] [--student-epochs 3]
                                   [--student-lr 1e-4] [--unlabelled-pool]

Prints teacher / student / undistilled-student accuracy on the 1,000 test images, accuracy
retained (%), parameters and sizes, latency at batch 1 and 64 in PyTorch (tsuika's forward)
and in ONNX Runtime (fp32 and int8) with the speed-ups, and the int8 graph's accuracy.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
from distill_common import latencies, onnx_accuracy, print_latencies, print_runs

import tsuika
from tsuika.config import DataConfig
from tsuika.data.images import read_image_examples, resolve_images
from tsuika.export import export

# Benches time cold runs: no frozen pass is read from the activation store.
os.environ.setdefault("TSUIKA_ACTIVATIONS", "off")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=50, help="training images per class")
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--student-epochs", type=int, default=3)
    parser.add_argument("--student-lr", type=float, default=1e-4)
    parser.add_argument(
        "--unlabelled-pool",
        action="store_true",
        help="add the whole bundled training folder (1,500 images) as inputs without labels",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(
        f"# bench/distill_images.py · {time.strftime('%Y-%m-%d')} · {platform.machine()} · "
        f"torch {torch.__version__} · onnxruntime {ort.__version__} · "
        f"{torch.get_num_threads()} threads"
    )
    output = Path(tempfile.mkdtemp(prefix="distill-images-"))
    common = dict(
        model="efficientnet-lite0",
        data={"train": "bundled:fashion", "k": args.k},
        output=str(output),
        progress=False,
        seed=args.seed,
        baselines={"classical": False, "probe": False},
    )
    seconds = {}
    started = time.perf_counter()
    teacher = tsuika.train(  # stem + stages 1-5 frozen and cached; stages 6-7 and the head train
        method="finetune",
        finetune={"freeze": 6},
        train={"epochs": args.teacher_epochs, "lr": 1e-3, "backbone_lr": 1e-4, "patience": 2},
        **common,
    )
    seconds["teacher"] = time.perf_counter() - started
    started = time.perf_counter()
    distill = {"teacher": str(teacher.path)}
    if args.unlabelled_pool:
        distill["unlabelled"] = str(resolve_images("bundled:fashion", "train"))
    student = tsuika.train(
        method="distill",
        distill=distill,
        train={"epochs": args.student_epochs, "backbone_lr": args.student_lr, "patience": 2},
        **common,
    )
    seconds["student"] = time.perf_counter() - started
    print_runs(teacher, student, seconds)

    test = read_image_examples("bundled:fashion", "test", DataConfig(), ["label"], [])
    images, labels = list(test.inputs), list(test.targets["label"])
    latency = {}
    for name, run in (("teacher", teacher), ("student", student)):
        folder = export(run.path, "onnx", output / f"{name}-onnx", int8=True)
        latency[name] = latencies(run, folder, images)
    print_latencies(latency)
    for name in ("model.onnx", "model.int8.onnx"):
        path = output / "student-onnx" / name
        accuracy = onnx_accuracy(student, path, images, labels, key=lambda image: 0)
        print(f"student {name} accuracy on the {len(images)} test images: {accuracy:.4f}")
    print(f"peak resident memory {student.summary['memory']['peak_rss_mb']:.0f} MB; runs: {output}")


if __name__ == "__main__":
    main()
