"""Tiny models and synthetic data for the task × method contract tests, built in code."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from helpers import FILLER_WORDS, NEGATIVE_WORDS, POSITIVE_WORDS, sentiment_rows
from PIL import Image
from torch import nn

import tsuika

TINY_CNN = "tiny-cnn"
PLANTED = "planted-means"


class TinyCNN(nn.Module):
    """Two conv groups with BatchNorm and a classifier: the image side of the matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 10)


class ChannelMeans(nn.Module):
    """Features = each colour channel's mean (exactly: a fixed 1×1 identity convolution, then
    global average pooling), so a linear head can fit any linear function of them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.stem.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        self.fc = nn.Linear(3, 2)


def register_tiny_models() -> None:
    def tiny(pretrained: bool) -> nn.Module:
        torch.manual_seed(1)  # "pretrained" weights: the same every time
        return TinyCNN()

    tsuika.register_module(TINY_CNN, tiny, ["stem", "block"], "fc", image_size=16, crop_pct=1.0)
    tsuika.register_module(
        PLANTED, lambda pretrained: ChannelMeans(), ["stem"], "fc", image_size=8, crop_pct=1.0
    )


def text_table(path: Path, n: int = 48, seed: int = 0) -> Path:
    """Columns text, label (pos/neg by vocabulary), topic (a second label), score (the number
    of positive words, a number to regress)."""
    rng = random.Random(seed)
    lines = ["text,label,topic,score"]
    for i in range(n):
        positives = rng.randint(0, 3) if i % 2 == 0 else 0
        negatives = 3 - positives if i % 2 == 0 else 3
        words = rng.sample(FILLER_WORDS, 3) + rng.sample(POSITIVE_WORDS, positives)
        words += rng.sample(NEGATIVE_WORDS, negatives)
        rng.shuffle(words)
        label = "pos" if positives > negatives else "neg"
        topic = ["film", "show"][i % 3 % 2]
        lines.append(f"{' '.join(words)},{label},{topic},{positives}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def colour_table(folder: Path, n: int = 120, seed: int = 0, size: int = 8) -> Path:
    """Solid-colour images and `images.csv` with columns path, label (red above green?),
    noise (a random label nothing can predict), group (a second real label: blue high?) and
    score (2·red − green + 0.5, in [0, 1] colour units: a linear function of the means)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,label,noise,group,score"]
    for i in range(n):
        red, green, blue = rng.integers(0, 256, size=3)
        Image.new("RGB", (size, size), (int(red), int(green), int(blue))).save(folder / f"{i}.png")
        label = "redder" if red > green else "greener"
        noise = "a" if rng.random() < 0.5 else "b"
        group = "blue" if blue > 127 else "dark"
        score = 2 * red / 255 - green / 255 + 0.5
        lines.append(f"{i}.png,{label},{noise},{group},{score:.6f}")
    table = folder / "images.csv"
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return table


# -- a tiny causal language model -------------------------------------------------------------
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""The ChatML template SmolLM2 and Qwen use (without a default system turn)."""
LLAMA_SPECIAL = ["<unk>", "<pad>", "<s>", "<|im_start|>", "<|im_end|>"]
LLAMA_WORDS = ["user", "assistant", "system", "pos", "neg", "say", "or", "answer", ":"]


def tiny_llama_folder(folder: Path, chat: bool = True) -> Path:
    """A 3-layer, width-32 Llama with tied embeddings and a word-level tokenizer (ChatML
    template, `<|im_end|>` as end of sequence), saved as a Hugging Face folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = list(dict.fromkeys(LLAMA_SPECIAL + LLAMA_WORDS + POSITIVE_WORDS + NEGATIVE_WORDS))
    words += [w for w in FILLER_WORDS if w not in words]
    vocab = {word: index for index, word in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    if chat:
        tokenizer.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def chat_rows(n: int = 24, seed: int = 0) -> list[dict]:
    """Prompt → completion rows: a line of sentiment words → `pos` or `neg`."""
    return [
        {"prompt": f"say pos or neg : {text}", "completion": label}
        for text, label in sentiment_rows(n, seed)
    ]
