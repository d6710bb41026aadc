"""A CUDA smoke check (run on a GPU machine; not part of the test suite).

    python bench/gpu_check.py

Trains a tiny BERT built in code (transfer, then finetune with bf16 autocast) and the bundled
EfficientNet-Lite0 (transfer on 20 Fashion-MNIST images per class) on the GPU, and compares
the GPU run's test predictions with the same run on the CPU.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

import tsuika
from tsuika.data.tables import BUNDLED

# Benches time cold runs: no frozen pass is read from the activation store.
os.environ.setdefault("TSUIKA_ACTIVATIONS", "off")


WORDS = [
    "good",
    "great",
    "fine",
    "lovely",
    "superb",
    "bad",
    "awful",
    "poor",
    "dull",
    "boring",
    "the",
    "a",
    "movie",
    "film",
    "plot",
]


def tiny_bert(folder: Path) -> Path:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def toy_csv(path: Path) -> Path:
    rows = ["text,label"]
    for i in range(200):
        positive = i % 2 == 0
        words = WORDS[:5] if positive else WORDS[5:10]
        rows.append(f"the {words[i % 5]} movie {words[(i + 2) % 5]},{'pos' if positive else 'neg'}")
    path.write_text("\n".join(rows) + "\n")
    return path


def main() -> None:
    print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0))
    tmp = Path(tempfile.mkdtemp())
    model = tiny_bert(tmp)
    data = toy_csv(tmp / "toy.csv")
    for method, extra in (("transfer", {}), ("finetune", {"train": {"bf16": True}})):
        started = time.perf_counter()
        run = tsuika.train(
            model=str(model),
            method=method,
            data={"train": str(data)},
            baselines={"scratch": True, "scratch_epochs": 2},
            output=str(tmp / "runs"),
            progress=False,
            **extra,
        )
        device = next(run.model.parameters()).device
        print(
            f"text {method}: accuracy {run.summary['test']['accuracy']:.3f}, "
            f"device {device}, {time.perf_counter() - started:.1f} s"
        )
    started = time.perf_counter()
    gpu = tsuika.train(
        model="efficientnet-lite0",
        data={"k": 20},
        baselines={"scratch": False},
        output=str(tmp / "runs"),
        progress=False,
    )
    print(
        f"image transfer (GPU): accuracy {gpu.summary['test']['accuracy']:.3f}, "
        f"{time.perf_counter() - started:.1f} s, timings {gpu.summary['timings']}"
    )
    probe = sorted((BUNDLED / "fashion" / "test" / "bag").glob("*.png"))[:8]
    on_gpu = gpu.predict_proba([str(p) for p in probe])
    cpu_model = gpu.model.to("cpu")
    on_cpu = tsuika.Run(gpu.path, cpu_model, gpu.task, gpu.summary, gpu.data).predict_proba(
        [str(p) for p in probe]
    )
    print("max |p_gpu - p_cpu| on 8 images:", float(abs(on_gpu - on_cpu).max()))


if __name__ == "__main__":
    main()
