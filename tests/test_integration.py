"""The bundled model on the bundled data: the path a new user's first run takes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
    assert summary["task"] == "classify"
    assert summary["targets"]["labels"] == {"label": ["negative", "positive"]}
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
    assert transfer.summary["data"]["test"] == finetune.summary["data"]["test"] == 2000
    assert transfer.summary["data"]["train"] == finetune.summary["data"]["train"] == 1024
    accuracy = {
        "transfer": transfer.summary["test"]["accuracy"],
        "finetune": finetune.summary["test"]["accuracy"],
    }
    gain = accuracy["finetune"] - accuracy["transfer"]
    print(f"transfer {accuracy['transfer']:.4f} finetune {accuracy['finetune']:.4f} {gain:+.4f}")
    # Measured 2026-11-25 (2-core CPU): transfer 0.7385, finetune 0.7640 (+0.0255 on the same
    # 2,000 test reviews). Fine-tuning the top two blocks must not lose to the frozen features:
    # asserted with a 3.5-point margin below the measured gain.
    assert accuracy["transfer"] >= 0.70
    assert accuracy["finetune"] >= 0.72
    assert accuracy["finetune"] >= accuracy["transfer"] - 0.01


@pytest.mark.integration
def test_efficientnet_transfer_on_bundled_fashion_with_100_per_class(tmp_path):
    run = tsuika.train(
        model="efficientnet-lite0",
        method="transfer",
        # 28-px images at 128 px instead of the model's 224: a third of the time.
        data={"train": "bundled:fashion", "k": 100, "image_size": 128},
        baselines={"scratch": False},
        output=str(tmp_path / "runs"),
        progress=False,
    )
    summary = run.summary
    assert summary["data"]["train"] == 1000 and summary["data"]["test"] == 1000
    assert summary["baselines"]["majority"]["accuracy"] == pytest.approx(0.1)
    print("efficientnet transfer:", summary["test"]["accuracy"])
    # Measured 0.848 at 224 px on 2026-11-23 (2-core CPU), 0.843 at 128 px on 2026-12-04;
    # asserted with a 4-point margin.
    assert summary["test"]["accuracy"] >= 0.80


@pytest.mark.integration
def test_efficientnet_pretrained_weights_really_loaded(tmp_path):
    """Every tensor equals the shipped ImageNet file, and its frozen features are worth far
    more to a new head than the same network's random-initialisation features."""
    from helpers import classifier

    from tsuika.api import task_and_data
    from tsuika.config import build_config
    from tsuika.methods import Transfer
    from tsuika.models import model_for
    from tsuika.models.images import efficientnet_lite0_weights, load_weights_file
    from tsuika.train.distributed import training_device
    from tsuika.train.phase import run_phase
    from tsuika.train.progress import Progress

    shipped = load_weights_file(efficientnet_lite0_weights())
    model = classifier("efficientnet-lite0", 10)
    assert torch.equal(model.stages[0].layers[0].weight, shipped["_conv_stem.weight"])
    assert torch.equal(model.stages[8].layers[1].running_var, shipped["_bn1.running_var"])

    config = build_config(
        {
            "model": "efficientnet-lite0",
            "data": {"k": 20, "image_size": 128},
            "train": {"epochs": 30},
            "progress": False,
        }
    )
    task, splits = task_and_data(config)
    assert task.labels["label"] and len(task.labels["label"]) == 10
    splits.test = splits.test.subset(list(range(0, 1000, 4)))  # 250 images, 25 per class
    splits.val = splits.val.subset(list(range(0, len(splits.val), 3)))  # 50 images
    truth = np.array(splits.test.targets["label"])
    assert np.bincount(truth).tolist() == [25] * 10
    scores = {}
    for pretrained in (True, False):
        torch.manual_seed(0)
        model = model_for(config, lambda width: task.head(width, config.head), pretrained)
        model.to(training_device())
        method = Transfer(config, task)
        method.prepare(model)
        phase = run_phase(model, method, splits, config, Progress(False), "transfer")
        scores[pretrained] = float((phase.predicted["label"] == truth).mean())
    print("probe on pretrained and on random features:", scores)
    # Measured on 2026-11-23 at 224 px: 0.804 with the ImageNet weights, 0.100 (chance) with
    # random ones; 2026-12-04 at 128 px (validation every third image): 0.780 and 0.100 — a
    # head trained by steps that did not fit random features at all. Solved in closed form
    # (2026-12-05): 0.776 and 0.428 (random convolutions are features too).
    assert scores[True] >= 0.70
    assert scores[True] - scores[False] >= 0.25


@pytest.mark.integration
def test_minilm_distilled_into_three_blocks_beats_the_same_student_without_teacher(tmp_path):
    """Teacher: MiniLM-L6 fine-tuned (block 6 and the head) on 128 reviews per class.
    Student: its blocks 1, 3 and 6, taught on the same labels plus 1,000 other training
    reviews without their labels; the baseline is the same student on the labels alone."""
    import csv

    from tsuika.data import tables

    def rows(split: str) -> list[dict]:
        path = tables.resolve("bundled:reviews", split)
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def write(path, table: list[list[str]]) -> str:
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(table)
        return str(path)

    # Every other test review (1,000) keeps the test cheap; the unlabelled reviews are the
    # training file's last 1,000 (k=128 per class draws few of them).
    test = write(
        tmp_path / "test.csv",
        [["text", "label"]] + [[r["text"], r["label"]] for r in rows("test")[::2]],
    )
    unlabelled = write(
        tmp_path / "unlabelled.csv", [["text"]] + [[r["text"]] for r in rows("train")[-1000:]]
    )
    common = dict(
        model="minilm-l6",
        data={"train": "bundled:reviews", "test": test, "k": 128},
        output=str(tmp_path / "runs"),
        progress=False,
        baselines={"classical": False, "probe": False, "majority": False},
    )
    teacher = tsuika.train(
        method="finetune",
        finetune={"freeze": 5},
        train={"epochs": 4, "lr": 1e-3, "backbone_lr": 1e-4, "patience": 2},
        **common,
    )
    student = tsuika.train(
        method="distill",
        distill={"teacher": str(teacher.path), "unlabelled": unlabelled},
        train={"epochs": 3, "backbone_lr": 1e-4, "patience": 2},
        **common,
    )
    kd = student.summary["distillation"]
    gain = student.summary["baselines"]["undistilled"]["gain"]
    print(kd["teacher"]["accuracy"], kd["student"]["accuracy"], gain)
    assert student.model.stage_names[1:4] == ["block1", "block2", "block3"]
    assert student.model.spec["keep_blocks"] == [1, 3, 6]
    # Measured 2026-11-30 (2-core CPU) on these 1,000 test reviews: teacher 0.685, student
    # 0.690 (100.7 % retained), the same student on the labels alone 0.660: gain +3.0 points
    # (95% CI +0.8 to +5.1); with 600 unlabelled reviews the gain was only +1.5 (CI -0.6 to
    # +3.7), on all 2,000 test reviews +3.75 (+2.4 to +5.0). Asserted with margins: a gain of
    # at least 1 point, and the 97 % retained.
    assert kd["teacher"]["accuracy"] >= 0.66
    assert gain["gain"] >= 0.01
    assert kd["retained_percent"] >= 97


@pytest.mark.integration
def test_check_finds_the_near_duplicate_across_the_bundled_review_split():
    """The bundled NOTICE names one near duplicate: a test review that is also in train,
    wrapped in quotes (measured cosine 0.985; the next pair that is not a paraphrase of one
    another, 0.895). The exact check passes; the embeddings find it."""
    from tsuika.advice.commands import check

    findings = check(model="minilm-l6", data={"train": "bundled:reviews"})
    found = {(f.check, f.verdict): f for f in findings}
    assert ("leakage", "problem") in found
    leaked = [row["input"] for pair in found[("leakage", "problem")].examples for row in pair]
    assert any(text.startswith("'Stock up on silver bullets") for text in leaked)
    assert found[("leakage", "problem")].count <= 3  # measured 2 (the other: a paraphrase)
    assert found[("balance", "ok")].numbers["ratio"] == 1.0
