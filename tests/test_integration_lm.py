"""The bundled SmolLM2-135M-Instruct learns the bundled instruction task with LoRA in a few
steps: validation loss falls below the base model's, the run generates, and its adapter loads
in plain PEFT on plain transformers and reproduces tsuika's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

import tsuika
from tsuika.data.tables import BUNDLED
from tsuika.models.causal import smollm2_folder

pytestmark = pytest.mark.integration


def _rows(split: str, start: int, count: int, path: Path) -> Path:
    lines = (BUNDLED / "instructions" / f"{split}.jsonl").read_text().splitlines()
    path.write_text("\n".join(lines[start : start + count]) + "\n")
    return path


def test_smollm2_lora_learns_generates_and_loads_in_plain_peft(tmp_path):
    run = tsuika.train(
        model="smollm2-135m",
        task="causal-lm",
        method="lora",
        data={
            "train": str(_rows("train", 0, 32, tmp_path / "train.jsonl")),
            "validation": str(_rows("train", 32, 16, tmp_path / "val.jsonl")),
            "test": str(_rows("test", 0, 24, tmp_path / "test.jsonl")),
        },
        train={"epochs": 2, "batch_size": 8, "patience": None},
        baselines={"bootstrap": 200},
        output=str(tmp_path / "runs"),
        progress=False,
    )
    summary = run.summary
    history = [json.loads(line) for line in (run.path / "metrics.jsonl").open()]
    base = summary["baselines"]["base"]
    print(json.dumps({"history": history, "base": base, "test": summary["test"]}, indent=1))
    assert summary["training"]["optimizer_steps"] == 8
    # Measured 2026-11-30: validation loss per completion token 2.93 (base) → 1.27 → 1.21,
    # test loss 3.25 → 1.34, test exact match 0.00 → 0.42.
    assert history[-1]["val_loss"] < base["validation"]["loss"]
    assert summary["test"]["loss"] < base["loss"]
    # Measured: 2.44 M of 137 M (1.8 %) with r=8 on every Linear of the 30 blocks.
    assert summary["parameters"]["trained"] / summary["parameters"]["total"] < 0.025

    answers = run.generate(["Is this review positive or negative? 'A gripping, heartfelt film.'"])
    assert len(answers) == 1 and answers[0]

    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    plain = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
        run.path / "model" / "adapter",
    ).eval()
    batch = tokenizer(["The film was a delight.", "Dull."], return_tensors="pt", padding=True)
    with torch.no_grad():
        theirs = plain(**batch).logits
        ours = run.model(dict(batch))["logits"]
    real = batch["attention_mask"].bool()
    # Different attention masks (tsuika's per-block causal mask vs transformers' own): same
    # numbers up to float rounding.
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-4, rtol=0)
