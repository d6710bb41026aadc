"""The bundled model on the bundled data: the path a new user's first run takes."""

from __future__ import annotations

import pytest

import tsuika


@pytest.mark.integration
def test_minilm_transfer_on_bundled_reviews_with_64_per_class(tmp_path):
    run = tsuika.train(
        model="minilm-l6",
        method="transfer",
        data={"train": "bundled:reviews", "k": 64},
        baselines={"scratch": False},
        output=str(tmp_path / "runs"),
        progress=False,
    )
    summary = run.summary
    assert summary["labels"] == ["negative", "positive"]
    assert summary["data"]["train"] == 128
    assert summary["data"]["test"] == 2000
    # Measured 0.6815 on 2026-11-23 (2-core CPU); LogisticRegression on the same
    # embeddings gives about 0.68. The margin allows for seeds and BLAS differences.
    assert summary["test"]["accuracy"] >= 0.65
    # The packaged test split is balanced, so always answering one class scores one half.
    assert summary["baselines"]["majority"]["accuracy"] == 0.5
    assert "scratch" not in summary["baselines"]
    assert run.predict(["A moving, beautifully acted film.", "A dull, lifeless mess."]) == [
        "positive",
        "negative",
    ]


@pytest.mark.integration
def test_minilm_finetune_versus_transfer_at_512_per_class(tmp_path):
    """Fine-tuning the top 2 of 6 blocks (embeddings + blocks 1-4 frozen and cached) against
    transfer learning on the same 1,024 examples and the same test split."""
    common = dict(
        model="minilm-l6",
        data={"train": "bundled:reviews", "k": 512},
        baselines={"scratch": False},
        output=str(tmp_path / "runs"),
        progress=False,
    )
    transfer = tsuika.train(method="transfer", **common)
    finetune = tsuika.train(
        method="finetune",
        finetune={"freeze": 5},
        train={"epochs": 6, "lr": 1e-3, "backbone_lr": 5e-5, "patience": 3},
        **common,
    )
    assert finetune.summary["parameters"]["trained_groups"] == ["block5", "block6", "head"]
    assert "cache" in finetune.summary["timings"]  # the frozen prefix ran once
    gain = finetune.summary["test"]["accuracy"] - transfer.summary["test"]["accuracy"]
    print(
        f"transfer {transfer.summary['test']['accuracy']:.4f} finetune "
        f"{finetune.summary['test']['accuracy']:.4f} gain {gain:+.4f}"
    )
