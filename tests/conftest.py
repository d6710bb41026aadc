"""Shared fixtures: a tiny BERT built in code (no downloads), toy data, fast configs."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import VOCAB, csv_text, fast_config, sentiment_rows
from transformers import BertConfig, BertModel, BertTokenizerFast

import tsuika

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: each with one thread, so two workers do not
    # fight over both cores (tiny models gain nothing from a second thread anyway).
    torch.set_num_threads(1)


def _is_long(item: pytest.Item) -> bool:
    return any(item.iter_markers("integration")) or any(item.iter_markers("slow"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long tests (bundled real models, subprocesses) spread over the workers of
    `make test` (`-n auto --dist worksteal`, one per core): worksteal hands worker j the j-th
    contiguous slice of this order, so each slice starts with its share of the long tests and
    the short ones fill in after; idle workers then steal from the others' queues. In file
    order one worker ran every long test while the other idled (13 min 21 s against 13 min
    16 s for one process; slices without the spread 10 min 54 s, measured 2026-12-07)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    long = [item for item in items if _is_long(item)]
    short = [item for item in items if not _is_long(item)]
    size = -(-len(items) // workers)  # worksteal's slice length
    order: list[pytest.Item] = []
    for worker in range(workers):
        share = long[worker::workers]
        fill = max(size - len(share), 0)
        order += share + short[:fill]
        short = short[fill:]
    items[:] = order + short


@pytest.fixture(scope="session", autouse=True)
def activation_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One activation store for the whole test run, shared by its workers (xdist gives each
    worker its own temporary folder inside one per run): what a frozen bundled model computed
    for one test is read by the next test on the same inputs, as it would be for a user
    (`tsuika.feed.store`; its own tests use stores of their own). Never the user's store."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "activations"
    os.environ["TSUIKA_ACTIVATIONS"] = str(folder)
    return folder


WriteFile = Callable[[str, str | bytes], Path]


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, width-32 BERT with a word-level vocabulary, saved as a Hugging Face folder."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    # transformers 5 ignores `vocab_file=` (every word would become [UNK]); `vocab=` reads it.
    tokenizer = BertTokenizerFast(vocab=str(vocab_file))
    assert tokenizer.tokenize("the good movie") == ["the", "good", "movie"]
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def dropout_free_bert(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT with dropout off: DDP draws dropout masks per process, so weights can
    only match across process counts without it."""
    folder = tmp_path_factory.mktemp("tiny-bert-nodrop")
    shutil.copytree(tiny_bert_dir, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 rows of separable toy sentiment, 20 `pos` and 20 `neg`."""
    path = tmp_path_factory.mktemp("data") / "sentiment.csv"
    path.write_text(csv_text(sentiment_rows(40)), encoding="utf-8")
    return path


@pytest.fixture
def write_file(tmp_path: Path) -> WriteFile:
    """`write_file("name.csv", text_or_bytes)` → its path under this test's tmp_path."""

    def write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return write


@pytest.fixture
def base_config(tiny_bert_dir: Path, tiny_csv: Path, tmp_path: Path) -> dict[str, Any]:
    """Fast-run config: tiny BERT, toy data, no scratch baseline, runs under tmp_path/runs."""
    return fast_config(tiny_bert_dir, tiny_csv, tmp_path / "runs")


@pytest.fixture(scope="session")
def tiny_run(
    tiny_bert_dir: Path, tiny_csv: Path, tmp_path_factory: pytest.TempPathFactory
) -> tsuika.Run:
    """One transfer run on the toy data (5 epochs), shared by the tests that only read it."""
    output = tmp_path_factory.mktemp("shared-runs")
    return tsuika.train(fast_config(tiny_bert_dir, tiny_csv, output, name="tiny"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer, width-32 Llama (tied embeddings, ChatML template) as a Hugging Face folder."""
    from builders import tiny_llama_folder

    return tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama"))
