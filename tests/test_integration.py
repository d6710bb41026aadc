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
