"""Every method family once on CUDA with bf16 autocast, against the same run on the CPU in
float32: speed, memory, and how far the two agree (run it on a GPU machine; not a test).

    python bench/gpu_check.py [--families text-transfer image-finetune ...] [--device cuda]

Each family is one `tsuika.train` on a bundled real model and data (MiniLM-L6 on reviews,
EfficientNet-Lite0 on Fashion-MNIST, SmolLM2-135M on the instructions, fashion-diffusion on
the sneakers), run twice, each in its own process so that its peak memory is its own: on the
GPU with `train.bf16` (where the family trains weights) and on the CPU in float32
(`CUDA_VISIBLE_DEVICES=""`). Printed per family: seconds of the whole run on each, the GPU's
peak allocated memory and the CPU process's peak RSS, the test metric on each, and the share
of test predictions that agree (where the run writes predictions). `--device cpu` runs both
sides on the CPU: a check of the script itself on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Benches time cold runs: no frozen pass is read from the activation store.
os.environ.setdefault("TSUIKA_ACTIVATIONS", "off")

REVIEWS = {"train": "bundled:reviews", "k": 64}
FAST = {"scratch": False}
FAMILIES: dict[str, dict] = {
    "text-transfer": {"model": "minilm-l6", "method": "transfer", "data": REVIEWS},
    "text-finetune": {"model": "minilm-l6", "method": "finetune", "data": REVIEWS},
    "text-lora": {"model": "minilm-l6", "method": "lora", "data": REVIEWS},
    "text-dora": {"model": "minilm-l6", "method": "dora", "data": REVIEWS},
    "text-ia3": {"model": "minilm-l6", "method": "ia3", "data": REVIEWS},
    "text-contrastive": {"model": "minilm-l6", "method": "contrastive", "data": REVIEWS},
    # The teacher is this family's own text-finetune run on the same device.
    "text-distill": {"method": "distill", "data": REVIEWS, "distill": {"blocks": [1, 3, 6]}},
    "image-transfer": {"model": "efficientnet-lite0", "method": "transfer", "data": {"k": 20}},
    "image-finetune": {"model": "efficientnet-lite0", "method": "finetune", "data": {"k": 20}},
    "lm-lora": {"model": "smollm2-135m", "task": "causal-lm", "method": "lora"},
    "lm-prompt-tuning": {"model": "smollm2-135m", "task": "causal-lm", "method": "prompt-tuning"},
    "t2i-textual-inversion": {"method": "textual-inversion"},
    "t2i-dreambooth-lora": {"method": "dreambooth-lora"},
    "t2i-hypernetwork": {"method": "hypernetwork"},
}


def settings(family: str, device: str, work: Path) -> dict:
    chosen = {**FAMILIES[family], "output": str(work / device), "progress": False}
    chosen["baselines"] = FAST
    chosen["train"] = {"epochs": 2, "bf16": device == "cuda"}
    if family.startswith("lm-"):
        chosen["train"] |= {"epochs": 1, "batch_size": 8, "max_length": 128}
    if family.startswith("t2i-"):
        chosen["diffusion"] = {"eval_images": 8}
        chosen["train"] = {"bf16": device == "cuda"}  # the method's own schedule
    if family == "text-distill":
        chosen["distill"] = {**chosen["distill"], "teacher": str(work / device / "teacher")}
    return chosen


def one(family: str, device: str, work: Path, out: Path) -> None:
    """Child process: one family's run on one device; its figures as JSON in `out`."""
    import resource

    import torch

    from tsuika.api import train

    if family == "text-distill" and not (work / device / "teacher").exists():
        teacher = settings("text-finetune", device, work) | {"name": "teacher"}
        train(**teacher)
    started = time.perf_counter()
    run = train(**settings(family, device, work))
    seconds = time.perf_counter() - started
    records = [json.loads(line) for line in (run.path / "predictions.jsonl").open()]
    figures = {
        "seconds": seconds,
        "device": str(next(run.model.parameters()).device),
        "test": run.summary.get("test", {}),
        "predictions": [r.get("prediction") for r in records],
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available()
        else None,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    out.write_text(json.dumps(figures))


def side(family: str, device: str, work: Path) -> dict:
    out = work / f"{family}-{device}.json"
    env = dict(os.environ)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    command = [sys.executable, __file__, "--one", family, "--on", device]
    command += ["--work", str(work), "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.read_text())


def headline(test: dict) -> str:
    """The test metric to compare: the usual ones first, else the first number there is."""
    numbers = {k: v for k, v in test.items() if isinstance(v, int | float)}
    for key in ("accuracy", "exact_match", "r2", "loss", *numbers):
        if key in numbers:
            return f"{key} {numbers[key]:.4f}"
    return "-"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--on", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one, args.on, args.work, args.out)
        return
    from importlib.metadata import version

    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(
        f"# bench/gpu_check.py · {time.strftime('%Y-%m-%d')} · {name} · torch "
        f"{torch.__version__} · tsuika {version('tsuika')}"
    )
    print("family | GPU s | CPU s | GPU peak MB | CPU RSS MB | GPU test | CPU test | agree")
    work = Path(tempfile.mkdtemp(prefix="tsuika-gpu-check-"))
    for family in args.families:
        gpu = side(family, args.device, work)
        cpu = side(family, "cpu", work) if args.device == "cuda" else gpu
        if "error" in gpu or "error" in cpu:
            print(f"{family} | error: {gpu.get('error') or cpu.get('error')}", flush=True)
            continue
        pairs = [
            (a, b)
            for a, b in zip(gpu["predictions"], cpu["predictions"], strict=False)
            if a is not None
        ]
        agree = sum(a == b for a, b in pairs) / len(pairs) if pairs else float("nan")
        peak = gpu["cuda_peak_mb"]
        print(
            f"{family} ({gpu['device']}) | {gpu['seconds']:.1f} | {cpu['seconds']:.1f} | "
            f"{'-' if peak is None else f'{peak:.0f}'} | {cpu['rss_peak_mb']:.0f} | "
            f"{headline(gpu['test'])} | {headline(cpu['test'])} | {agree:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
