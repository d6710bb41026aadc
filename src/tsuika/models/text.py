"""Hugging Face text encoders (local folders) as staged `AdaptableModel`s.

BERT-family encoders are split into embeddings → one stage per transformer block → pooler →
head, so that freezing, per-block learning rates and frozen-prefix caching work per block.
Other encoders run as a single encoder stage (still cacheable at the pooled features).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from tsuika.config import HeadConfig
from tsuika.errors import TsuikaError
from tsuika.model_kinds import TEXT_ENCODER
from tsuika.models.base import AdaptableModel, HeadBuilder, State
from tsuika.models.heads import TokenPooler

# Encoders whose blocks take (hidden_states, attention_mask) and nothing else that matters.
STAGED_FAMILIES = {"bert", "roberta", "xlm-roberta", "electra", "camembert"}


class TextPreprocess:
    """Texts → token ids (once, unpadded) → padded batches (dynamic padding)."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id or 0

    def encode(self, texts: list[str]) -> list[State]:
        """One dict of 1-D tensors per text; `len(item["input_ids"])` is its token length."""
        if not texts:  # fast tokenizers fail on an empty batch
            return []
        out = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        keys = [k for k in ("input_ids", "token_type_ids") if k in out]
        return [
            {k: torch.tensor(out[k][i], dtype=torch.long) for k in keys} for i in range(len(texts))
        ]

    @staticmethod
    def length(item: State) -> int:
        return int(item["input_ids"].shape[0])

    def collate(self, items: list[State]) -> State:
        """Pad to the longest item of the batch; attention_mask marks real tokens. Every key
        is kept with its own dtype (token ids, and whatever else an item carries)."""
        longest = max(self.length(item) for item in items)
        batch = {}
        for key in items[0]:
            fill = self.pad_id if key == "input_ids" else 0
            first = items[0][key]
            shape = (len(items), longest, *first.shape[1:])
            batch[key] = torch.full(shape, fill, dtype=first.dtype)
            for row, item in enumerate(items):
                batch[key][row, : len(item[key])] = item[key]
        batch["attention_mask"] = torch.zeros((len(items), longest), dtype=torch.long)
        for row, item in enumerate(items):
            batch["attention_mask"][row, : self.length(item)] = 1
        return batch


class EmbeddingStage(nn.Module):
    def __init__(self, embeddings: nn.Module) -> None:
        super().__init__()
        self.embeddings = embeddings

    def forward(self, state: State) -> State:
        hidden = self.embeddings(
            input_ids=state["input_ids"], token_type_ids=state.get("token_type_ids")
        )
        return {"hidden": hidden, "attention_mask": state["attention_mask"]}


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] of 1/0 → [B, 1, 1, T] of 0/−max: padded keys get no attention weight.

    Broadcast over heads and queries; accepted by both eager and SDPA attention. (Built here,
    once per block call, because transformers' own mask factory is slow on CPU.)
    """
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class BlockStage(nn.Module):
    """One transformer block taking (hidden_states, attention_mask)."""

    def __init__(self, block: nn.Module, config: Any) -> None:
        super().__init__()
        self.block = block
        self.config = config

    def forward(self, state: State) -> State:
        hidden = state["hidden"]
        mask = additive_mask(state["attention_mask"], hidden.dtype)
        out = self.block(hidden, attention_mask=mask)
        hidden = out[0] if isinstance(out, tuple) else out
        return {"hidden": hidden, "attention_mask": state["attention_mask"]}


class EncoderStage(nn.Module):
    """A whole encoder as one stage, for families without a staged split."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, state: State) -> State:
        inputs = {k: v for k, v in state.items() if k != "labels"}
        hidden = self.encoder(**inputs).last_hidden_state
        return {"hidden": hidden, "attention_mask": state["attention_mask"]}


def sentence_transformers_pooling(folder: Path) -> tuple[str, bool]:
    """Read the pooling mode and normalisation a sentence-transformers folder declares."""
    mode, normalize = "mean", False
    pooling = folder / "1_Pooling" / "config.json"
    if pooling.is_file():
        settings = json.loads(pooling.read_text())
        mode = "cls" if settings.get("pooling_mode_cls_token") else "mean"
    modules = folder / "modules.json"
    if modules.is_file():
        normalize = any(
            m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text())
        )
    return mode, normalize


CODE_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json")
"""Files in which a Hugging Face folder can ask (`auto_map`) to run its own Python code."""


def check_folder(folder: Path) -> None:
    """A usable folder has a config.json and asks to run no code of its own: tsuika never
    runs code from a model folder (a run's meta.json may come from anyone)."""
    if not (folder / "config.json").is_file():
        raise TsuikaError(
            f"model folder {folder} has no config.json; give a Hugging Face model folder "
            "(config.json, weights, tokenizer) or a bundled name from `tsuika models`"
        )
    for name in CODE_FILES:
        file = folder / name
        if not file.is_file():
            continue
        try:
            settings = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise TsuikaError(f"{file} is not valid JSON; the model folder is damaged") from None
        if isinstance(settings, dict) and "auto_map" in settings:
            raise TsuikaError(
                f"{file} asks to run the folder's own Python code (auto_map); tsuika never runs "
                "code from a model folder, so custom-code models are not supported — use a "
                "model whose architecture transformers itself provides"
            )


def longest_input(folder: Path, tokenizer: Any, config: Any) -> int:
    """The most tokens the model reads: sentence-transformers' `max_seq_length` when the
    folder declares it (all-MiniLM-L6-v2: 256, what it was trained on), else the smaller of
    the tokenizer's maximum and the position embeddings."""
    declared = folder / "sentence_bert_config.json"
    if declared.is_file():
        value = json.loads(declared.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    limits = [getattr(config, "max_position_embeddings", None), tokenizer.model_max_length]
    return min([v for v in limits if isinstance(v, int) and 0 < v < 100_000] or [512])


LENGTH_PERCENTILE = 95
"""`train.max_length: null` reads texts up to this percentile of the training lengths."""
SHORTEST_LIMIT = 128
"""…but never cuts below this many tokens (or the model's maximum, if lower): a limit costs
only the tokens of the texts longer than it, and texts met later can be longer than a few
training ones (16 training reviews' 95th percentile, 48 tokens, cut 4.5 % of the 2,000 test
reviews)."""


def fitted_length(model: AdaptableModel, texts: list[str]) -> tuple[int, str]:
    """The input length for these training texts — their 95th-percentile token length,
    rounded up to a multiple of 16, at least `SHORTEST_LIMIT`, at most the model's maximum —
    set on the model, and a line saying so (and how many texts are cut). Length-sorted
    batches pad little, so a longer limit costs only the tokens the long texts really have."""
    preprocess = model.preprocess
    longest = int(model.spec.get("longest_input", preprocess.max_length))
    lengths = np.array([len(ids) for ids in preprocess.tokenizer(list(texts))["input_ids"]])
    wanted = (
        int(np.ceil(np.percentile(lengths, LENGTH_PERCENTILE) / 16) * 16) if len(lengths) else 16
    )
    chosen = min(max(wanted, SHORTEST_LIMIT), longest)
    preprocess.max_length = model.spec["max_length"] = chosen
    cut = int((lengths > chosen).sum())
    note = (
        f"texts read at up to {chosen} tokens (train.max_length; the training texts' "
        f"{LENGTH_PERCENTILE}th percentile, at least {SHORTEST_LIMIT}; median "
        f"{int(np.median(lengths)) if len(lengths) else 0}; the model reads at most {longest})"
    )
    if cut:
        note += f": {cut} of {len(lengths)} training texts are cut"
    return chosen, note


def load_text_model(
    folder: Path,
    source: str,
    new_head: HeadBuilder,
    head: HeadConfig,
    max_length: int | None,
    pretrained: bool = True,
) -> AdaptableModel:
    """Build the staged model from a local HF folder; `pretrained=False` gives a random init
    of the same architecture (the from-scratch baseline)."""
    check_folder(folder)
    try:
        # trust_remote_code=False: never run, and never ask on stdin whether to run, the
        # folder's own code (the check above already refused such folders).
        safe = {"local_files_only": True, "trust_remote_code": False}
        config = AutoConfig.from_pretrained(folder, **safe)
        tokenizer = AutoTokenizer.from_pretrained(folder, **safe)
        if pretrained:
            encoder = AutoModel.from_pretrained(folder, config=config, **safe)
        else:
            encoder = AutoModel.from_config(config, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as err:
        raise TsuikaError(f"could not load the model in {folder}: {err}") from None

    longest = longest_input(folder, tokenizer, config)
    max_length = min(max_length, longest) if max_length else longest
    mode, normalize = sentence_transformers_pooling(folder)
    if head.pooling != "auto":
        mode = head.pooling
    width = config.hidden_size
    pooler = TokenPooler(mode, normalize)

    if config.model_type in STAGED_FAMILIES:
        stages: list[tuple[str, nn.Module]] = [("embeddings", EmbeddingStage(encoder.embeddings))]
        stages += [
            (f"block{i + 1}", BlockStage(block, encoder.config))
            for i, block in enumerate(encoder.encoder.layer)
        ]
    else:
        stages = [("encoder", EncoderStage(encoder))]
    stages += [("pooler", pooler), ("head", new_head(width))]

    spec = {
        "model_kind": TEXT_ENCODER,
        "source": source,
        "head": head.model_dump(),
        "max_length": max_length,
        "longest_input": longest,
        "pooling": mode,
        "normalize": normalize,
    }
    model = AdaptableModel(stages, spec, TextPreprocess(tokenizer, max_length), encoder)
    # The HF pooler (if any) is unused by sentence embeddings: keep it out of every group.
    return model
