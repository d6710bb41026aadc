"""PEFT adapters (lora, dora, ia3) on the tiny BERT and the tiny CNN: what trains, a fresh
adapter changes nothing, the saved folder is a standard PEFT adapter that `peft` loads without
tsuika and that reproduces tsuika's backbone outputs, top-N blocks keep the prefix cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from builders import TINY_CNN, TinyCNN, colour_table, register_tiny_models
from helpers import sentiment_rows
from peft import PeftModel
from transformers import AutoModel

import tsuika
from tsuika.config import build_config
from tsuika.errors import TsuikaError
from tsuika.methods import METHODS
from tsuika.models import model_for
from tsuika.tasks import Classify

TEXTS = [text for text, _ in sentiment_rows(6)]


def prepared(base_config: dict, method: str = "lora", **adapter) -> tuple:
    config = build_config({**base_config, "method": method, "adapter": adapter})
    task = Classify(["label"], {"label": ["neg", "pos"]})
    model = model_for(config, lambda width: task.head(width, config.head))
    trainer = METHODS[method](config, task)
    return config, model, trainer


def backbone(model, texts: list[str]) -> torch.Tensor:
    """Hidden states after the last block (before pooling), [B, T, width], eval mode."""
    state = model.preprocess.collate(model.preprocess.encode(texts))
    with torch.no_grad():
        return model.eval()(state, 0, model.num_stages - 2)["hidden"]


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_a_fresh_adapter_leaves_the_outputs_unchanged(base_config, method):
    _, model, trainer = prepared(base_config, method)
    before = backbone(model, TEXTS)
    trainer.prepare(model)
    assert model.adapters is not None
    torch.testing.assert_close(backbone(model, TEXTS), before, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_only_adapters_and_the_head_are_trainable(base_config, method):
    _, model, trainer = prepared(base_config, method)
    trainer.prepare(model)
    names = list(trainer.trainable_parameters(model))
    head = f"stages.{model.num_stages - 1}."
    marks = {"lora": "lora_", "dora": "lora_", "ia3": "ia3_l"}[method]
    assert all(n.startswith(head) or marks in n for n in names)
    assert any(marks in n for n in names) and any(n.startswith(head) for n in names)
    if method == "lora":  # r·(in + out) per adapted Linear: every Linear of both blocks
        linears = [m for m in model.library.encoder.modules() if hasattr(m, "lora_A")]
        expected = sum(8 * (m.in_features + m.out_features) for m in linears)
        expected += sum(p.numel() for p in model.head.parameters())
        assert len(linears) == 12  # q, k, v, attention output, intermediate, output × 2
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_top_blocks_only_keep_the_frozen_prefix_cached(base_config):
    _, model, trainer = prepared(base_config, blocks=1)
    trainer.prepare(model)
    adapted = {n.split(".")[1] for n in trainer.trainable_parameters(model)}
    assert adapted == {str(model.stage_names.index("block2")), str(model.num_stages - 1)}
    assert trainer.cache_boundary(model) == model.stage_names.index("block2")


def test_target_patterns_choose_layers_and_a_miss_is_a_clear_error(base_config):
    _, model, trainer = prepared(base_config, target_modules=["*query", "*value"])
    trainer.prepare(model)
    config = json.loads(
        json.dumps(model.adapters.peft_config["default"].target_modules, default=sorted)
    )
    assert sorted(config) == sorted(
        f"encoder.layer.{i}.attention.self.{p}" for i in (0, 1) for p in ("query", "value")
    )
    _, model, trainer = prepared(base_config, target_modules=["*nothing*"])
    with pytest.raises(TsuikaError, match="matches no Linear or Conv2d"):
        trainer.prepare(model)


def test_the_saved_adapter_loads_in_plain_peft_and_reproduces_the_backbone(
    base_config, tiny_bert_dir: Path
):
    run = tsuika.train(base_config, method="lora", adapter={"lr": 0.05}, train={"epochs": 2})
    folder = run.path / "model" / "adapter"
    assert {p.name for p in folder.iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    plain = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_bert_dir), folder).eval()
    tokens = run.model.preprocess.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = plain(**tokens).last_hidden_state
        untouched = AutoModel.from_pretrained(tiny_bert_dir).eval()(**tokens).last_hidden_state
    mask = tokens["attention_mask"].bool()
    ours = backbone(tsuika.load(run.path).model, TEXTS)
    torch.testing.assert_close(ours[mask], theirs[mask], rtol=0, atol=1e-6)
    assert (theirs[mask] - untouched[mask]).abs().max() > 1e-3  # the adapter did train


def test_image_adapter_loads_with_peft_on_the_same_module(tmp_path: Path):
    register_tiny_models()
    table = colour_table(tmp_path / "img", 48)
    run = tsuika.train(
        model=TINY_CNN,
        method="lora",
        data={"train": str(table)},
        output=str(tmp_path / "runs"),
        progress=False,
        train={"epochs": 2, "batch_size": 8},
        adapter={"lr": 0.05},
    )
    torch.manual_seed(1)  # the tiny CNN's "pretrained" weights (builders.register_tiny_models)
    plain = PeftModel.from_pretrained(TinyCNN(), run.path / "model" / "adapter").eval()
    pixels = torch.rand(3, 3, 16, 16)
    loaded = tsuika.load(run.path).model.eval()
    with torch.no_grad():
        theirs = plain.base_model.model.block(plain.base_model.model.stem(pixels))
        ours = loaded({"pixels": pixels}, 0, 2)["hidden"]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_a_damaged_adapter_folder_is_named(base_config):
    run = tsuika.train(base_config, method="lora", train={"epochs": 1})
    (run.path / "model" / "adapter" / "adapter_config.json").unlink()
    with pytest.raises(TsuikaError, match="is not a PEFT adapter folder"):
        tsuika.load(run.path)


def test_lora_adapts_the_bundled_efficientnets_pointwise_convolutions():
    """The package's 1×1 convolutions become plain Conv2d (same tensors, same outputs), so
    PEFT can inject LoRA there; padded convolutions and depthwise ones stay as they are."""
    from efficientnet_lite_pytorch import EfficientNet

    from tsuika.config import HeadConfig, build_config
    from tsuika.methods import Lora
    from tsuika.models.heads import Head
    from tsuika.models.images import efficientnet_lite0
    from tsuika.tasks import task_for

    torch.manual_seed(0)
    model = efficientnet_lite0(lambda width: Head(width, 3), HeadConfig(), pretrained=False)
    package = EfficientNet.from_name("efficientnet-lite0")
    package.load_state_dict(model.library.state_dict())
    pixels = torch.randn(2, 3, 64, 64)
    assert torch.equal(
        model.library.eval().extract_features(pixels), package.eval().extract_features(pixels)
    )
    before = model.eval()({"pixels": pixels})["logits"]
    config = build_config({"model": "efficientnet-lite0", "method": "lora"})
    method = Lora(config, task_for(config))
    method.prepare(model)
    adapted = [n for n, _ in model.library.named_modules() if n.endswith("lora_A.default")]
    # Each block's project convolution and, but for the first block, its expand convolution
    # (the head convolution's parent is the network itself, outside every layer group).
    assert len(adapted) == 16 + 15
    assert torch.equal(model.eval()({"pixels": pixels})["logits"], before)  # B = 0 at start
    model.train()({"pixels": pixels})["logits"].sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
