"""Distillation: the KD loss, the teacher's cached targets, students built from a teacher,
the undistilled baseline and the evidence in the summary — on a tiny BERT built in code."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import VOCAB, csv_text, fast_config, sentiment_rows
from transformers import AutoModel, BertConfig, BertModel, BertTokenizerFast

import tsuika
from tsuika.api import as_config, task_and_data
from tsuika.cli import main
from tsuika.errors import TsuikaError
from tsuika.feed import Batch
from tsuika.feed.cache import CacheSettings
from tsuika.methods import distill as distill_module
from tsuika.methods.distill import (
    TEACHER_LOGITS,
    Distill,
    cosine_loss,
    soft_target_loss,
)
from tsuika.models import Request, load_model
from tsuika.models.heads import Head
from tsuika.models.student import evenly_spaced, keep_blocks
from tsuika.train.phase import feed_of


@pytest.fixture(scope="module")
def four_block_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer, width-32 BERT: a teacher with blocks to drop."""
    folder = tmp_path_factory.mktemp("bert4")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kd-data") / "sentiment.csv"
    path.write_text(csv_text(sentiment_rows(60)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def teacher_run(four_block_bert: Path, data_file: Path, tmp_path_factory) -> tsuika.Run:
    output = tmp_path_factory.mktemp("teacher-runs")
    return tsuika.train(
        fast_config(
            four_block_bert,
            data_file,
            output,
            method="finetune",
            name="teacher",
            train={"backbone_lr": 1e-3},
        )
    )


def distill_config(teacher_run, data_file: Path, output: Path, **distill) -> dict:
    return fast_config(
        Path("unused"),
        data_file,
        output,
        method="distill",
        distill={"teacher": str(teacher_run.path), **distill},
        train={"backbone_lr": 1e-3},
    )


# -- the loss ------------------------------------------------------------------------------
def test_soft_target_loss_matches_a_hand_computation():
    """T² · Σ p_t (log p_t − log p_s), worked out with `math` for two classes at T = 2."""
    student, teacher, t = [1.0, -1.0], [0.0, 2.0], 2.0

    def softmax(z):
        e = [math.exp(v / t) for v in z]
        return [v / sum(e) for v in e]

    p_s, p_t = softmax(student), softmax(teacher)
    expected = t**2 * sum(
        pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s, strict=True)
    )
    got = soft_target_loss(torch.tensor([student]), torch.tensor([teacher]), t)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # T² scaling: the same logits at T = 1 give the unscaled KL.
    p_s1 = [math.exp(v) / sum(math.exp(w) for w in student) for v in student]
    p_t1 = [math.exp(v) / sum(math.exp(w) for w in teacher) for v in teacher]
    kl1 = sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t1, p_s1, strict=True))
    got1 = soft_target_loss(torch.tensor([student]), torch.tensor([teacher]), 1.0)
    assert got1.item() == pytest.approx(kl1, rel=1e-6)


def test_soft_target_loss_is_zero_when_the_student_copies_the_teacher():
    logits = torch.randn(5, 3)
    assert soft_target_loss(logits, logits.clone(), 3.0).abs().max().item() < 1e-6
    assert cosine_loss(logits, 2 * logits).abs().max().item() < 1e-6


def test_evenly_spaced_is_distilberts_choice():
    assert evenly_spaced(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT's layers of BERT-base
    assert evenly_spaced(6, 3) == [0, 2, 5]
    assert evenly_spaced(4, 2) == [0, 3]


# -- students built from a teacher ---------------------------------------------------------
def test_student_keeps_the_chosen_blocks_with_the_teachers_weights(teacher_run, tmp_path):
    teacher = teacher_run.model
    request = Request(lambda width: Head(width, 2), _head_config())
    student = load_model(teacher.spec["source"], request)
    student.load_state_dict(teacher.state_dict())
    keep_blocks(student, [1, 4])
    assert student.stage_names == ["embeddings", "block1", "block2", "pooler", "head"]
    assert student.spec["keep_blocks"] == [1, 4]
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    for mine, theirs in ((1, 1), (2, 4)):
        for key, value in student_state.items():
            if key.startswith(f"stages.{mine}."):
                twin = key.replace(f"stages.{mine}.", f"stages.{theirs}.", 1)
                assert torch.equal(value, teacher_state[twin]), key
    assert torch.equal(
        student_state["stages.0.embeddings.word_embeddings.weight"],
        teacher_state["stages.0.embeddings.word_embeddings.weight"],
    )
    # The library network is cut too: a plain transformers folder with 2 layers.
    student.library.save_pretrained(tmp_path / "hf")
    reloaded = AutoModel.from_pretrained(tmp_path / "hf")
    assert reloaded.config.num_hidden_layers == 2
    assert torch.equal(
        reloaded.encoder.layer[1].output.dense.weight,
        teacher.library.encoder.layer[3].output.dense.weight,
    )


def _head_config():
    from tsuika.config import HeadConfig

    return HeadConfig()


def test_bad_block_lists_are_clear_errors(teacher_run):
    def fresh():
        request = Request(lambda width: Head(width, 2), _head_config())
        return load_model(teacher_run.model.spec["source"], request)

    with pytest.raises(TsuikaError, match="block 5 does not exist"):
        keep_blocks(fresh(), [1, 5])
    with pytest.raises(TsuikaError, match="keeps all 4 blocks"):
        keep_blocks(fresh(), [1, 2, 3, 4])


def test_efficientnet_student_drops_repeated_blocks_only():
    from tsuika.config import HeadConfig
    from tsuika.models.images import efficientnet_lite0
    from tsuika.models.student import block_count, default_blocks

    model = efficientnet_lite0(lambda width: Head(width, 3), HeadConfig(), pretrained=False)
    assert block_count(model) == 16
    blocks = default_blocks(model)
    assert len(blocks) == 10  # stages of 1,2,2,3,3,4,1 blocks keep 1,1,1,2,2,2,1
    with pytest.raises(TsuikaError, match="must keep block 2"):
        keep_blocks(efficientnet_lite0(lambda w: Head(w, 3), HeadConfig(), False), [1, 3])
    keep_blocks(model, blocks)
    assert len(model.library._blocks) == 10
    out = model.eval()({"pixels": torch.randn(2, 3, 64, 64)})["logits"]
    assert out.shape == (2, 3)


# -- the teacher's targets -----------------------------------------------------------------
def _method_and_feed(teacher_run, data_file, tmp_path, **distill):
    config = as_config(distill_config(teacher_run, data_file, tmp_path / "runs", **distill), {})
    config = Distill.configured(config)
    task, splits = task_and_data(config)
    method = Distill(config, task)
    model = method.build_model(config)
    method.prepare(model)
    return method, model, feed_of(model, task, splits.train), splits


def test_cached_teacher_logits_equal_live_ones(teacher_run, data_file, tmp_path):
    method, model, feed, _ = _method_and_feed(teacher_run, data_file, tmp_path)
    cached = method.precompute(model, feed, CacheSettings(mode="off"), "train")
    batch = cached.batch([0, 3, 5, 7])
    assert TEACHER_LOGITS in batch.targets
    live_batch = Batch(batch.state, 0, {}, batch.indices, batch.weight)
    live, _ = method._teacher_batch(live_batch)
    assert torch.allclose(batch.targets[TEACHER_LOGITS], live, atol=1e-5)
    # And they are the teacher run's own outputs on those texts.
    texts = [feed.inputs[i] for i in batch.indices]
    assert torch.allclose(teacher_run.outputs(texts)["logits"], live, atol=1e-5)


def test_teacher_stays_bit_identical_while_the_student_trains(
    teacher_run, data_file, tmp_path, monkeypatch
):
    seen = {}
    original = distill_module.load_teacher

    def recording(folder):
        model, task, meta = original(folder)
        seen["model"] = model
        seen["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        return model, task, meta

    monkeypatch.setattr(distill_module, "load_teacher", recording)
    run = tsuika.train(distill_config(teacher_run, data_file, tmp_path / "runs"))
    after = seen["model"].state_dict()
    assert all(torch.equal(after[k], v) for k, v in seen["before"].items())
    assert all(not p.requires_grad for p in seen["model"].parameters())
    # The student is a different, smaller network that changed.
    assert run.model.num_stages == seen["model"].num_stages - 2


# -- a whole run ---------------------------------------------------------------------------
def test_distilled_run_reports_teacher_student_and_the_undistilled_baseline(
    teacher_run, data_file, tmp_path
):
    run = tsuika.train(
        {**distill_config(teacher_run, data_file, tmp_path / "runs"), "report": True}
    )
    summary = run.summary
    assert summary["method"] == "distill"
    kd = summary["distillation"]
    assert kd["teacher"]["blocks"] == 4 and kd["student"]["blocks"] == 2
    assert kd["student"]["parameters"] < kd["teacher"]["parameters"]
    assert kd["teacher_cached"] is True
    for side in ("teacher", "student"):
        assert kd[side]["latency_batch1_ms"] > 0 and kd[side]["latency_batch64_ms"] > 0
    assert kd["retained_percent"] == pytest.approx(
        100 * kd["student"]["accuracy"] / kd["teacher"]["accuracy"]
    )
    undistilled = summary["baselines"]["undistilled"]
    assert {"gain", "low", "high"} <= set(undistilled["gain"])
    assert undistilled["epochs"] == summary["training"]["epochs_run"]
    report = (run.path / "report.html").read_text(encoding="utf-8")
    assert "Teacher and student" in report and "trained on the labels alone" in report
    # The run folder holds the whole student and rebuilds it without the teacher.
    again = tsuika.load(run.path)
    texts = ["the good movie", "a bad film"]
    assert again.model.stage_names == run.model.stage_names
    assert torch.equal(again.outputs(texts)["logits"], run.outputs(texts)["logits"])


def test_unlabelled_inputs_add_soft_targets_only(teacher_run, data_file, tmp_path, write_file):
    extra = write_file("extra.csv", "text\n" + "\n".join(f"good fine movie {i}" for i in range(9)))
    method, model, feed, _ = _method_and_feed(
        teacher_run, data_file, tmp_path, unlabelled=str(extra)
    )
    passes = []
    teacher_outputs = method._teacher_outputs
    method._teacher_outputs = lambda inputs, *rest: (
        passes.append(len(inputs)) or teacher_outputs(inputs, *rest)
    )
    grown = method.precompute(model, feed, CacheSettings(mode="off"), "train")
    assert passes == [len(feed) + 9]  # one teacher pass, labelled and unlabelled together
    assert len(grown) == len(feed) + 9
    assert grown.targets["labelled"].tolist() == [1.0] * len(feed) + [0.0] * 9
    # The unlabelled rows' label slot is the teacher's choice from that same pass.
    guesses = grown.targets["teacher_logits"][len(feed) :].argmax(-1)
    assert torch.equal(grown.targets["label"][len(feed) :], guesses)
    # An unlabelled row's loss does not depend on its label slot.
    batch = grown.batch([len(feed), len(feed) + 1])
    first = method.step(model, batch)["loss"]
    flipped = {**batch.targets, "label": 1 - batch.targets["label"]}
    second = method.step(model, Batch(batch.state, 0, flipped, batch.indices, 2.0))["loss"]
    assert torch.equal(first, second)


def test_student_by_name_gets_a_new_head(teacher_run, data_file, tmp_path, tiny_bert_dir):
    config = distill_config(teacher_run, data_file, tmp_path / "runs", student=str(tiny_bert_dir))
    run = tsuika.train(config)
    assert run.summary["model"] == str(tiny_bert_dir)
    assert run.summary["distillation"]["student"]["blocks"] == 2


def test_distill_mistakes_are_clear_errors(teacher_run, data_file, tmp_path, write_file):
    runs = tmp_path / "runs"
    with pytest.raises(TsuikaError, match=r"needs distill\.teacher"):
        tsuika.train(fast_config(Path("x"), data_file, runs, method="distill"))
    with pytest.raises(TsuikaError, match="not a finished tsuika run"):
        tsuika.train(
            fast_config(
                Path("x"), data_file, runs, method="distill", distill={"teacher": str(tmp_path)}
            )
        )
    other = write_file("other.csv", csv_text([("good movie", "yes"), ("bad film", "no")] * 10))
    with pytest.raises(TsuikaError, match="trained on the labels"):
        tsuika.train(distill_config(teacher_run, other, runs))
    assert not runs.exists() or not any(runs.iterdir())  # nothing written for a mistake
    code = main(["distill", "--teacher", str(tmp_path / "missing"), "--data", str(data_file)])
    assert code == 2


def test_cli_distill_trains_a_student(teacher_run, data_file, tmp_path, capsys):
    code = main(
        [
            "distill",
            "--teacher",
            str(teacher_run.path),
            "--blocks",
            "2,3",
            "--data",
            str(data_file),
            "--output",
            str(tmp_path / "runs"),
            "--quiet",
            "--epochs",
            "2",
            "baselines.bootstrap=200",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "teacher → student" in printed
    run = tsuika.load(next((tmp_path / "runs").iterdir()))
    assert run.model.spec["keep_blocks"] == [2, 3]


def test_a_run_with_unlabelled_inputs_scores_its_baselines_on_the_labelled_split(
    teacher_run, data_file, tmp_path, write_file
):
    extra = write_file("extra.csv", "text\n" + "\n".join(f"bad dull film {i}" for i in range(7)))
    config = distill_config(teacher_run, data_file, tmp_path / "runs", unlabelled=str(extra))
    run = tsuika.train({**config, "baselines": {"probe": True, "bootstrap": 200}})
    assert {"probe", "undistilled"} <= set(run.summary["baselines"])
    assert run.summary["distillation"]["unlabelled"] == 7
    assert run.summary["data"]["train"] == teacher_run.summary["data"]["train"]


def test_hidden_state_matching_adds_the_cosine_loss(teacher_run, data_file, tmp_path):
    method, model, feed, _ = _method_and_feed(teacher_run, data_file, tmp_path, hidden_weight=0.5)
    cached = method.precompute(model, feed, CacheSettings(mode="off"), "train")
    assert "teacher_features" in cached.targets
    batch = cached.batch([0, 1, 2, 3])
    with_hidden = method.step(model, batch)["loss"]
    pooled = model(batch.state, 0, model.num_stages - 1)["features"]
    expected = 0.5 * cosine_loss(pooled, batch.targets["teacher_features"]).mean()
    method.kd = method.kd.model_copy(update={"hidden_weight": 0.0})
    without = method.step(model, batch)["loss"]
    assert with_hidden.item() == pytest.approx(without.item() + expected.item(), rel=1e-5)


def test_images_distil_with_a_flat_folder_of_unlabelled_images(tmp_path):
    from builders import TINY_CNN, colour_table, register_tiny_models
    from PIL import Image

    register_tiny_models()
    table = colour_table(tmp_path / "img", 40)
    extra = tmp_path / "unlabelled"
    extra.mkdir()
    for i, colour in enumerate([(250, 10, 10), (10, 250, 10), (200, 40, 90)]):
        Image.new("RGB", (8, 8), colour).save(extra / f"u{i}.png")
    common = dict(
        model=TINY_CNN,
        data={"train": str(table)},
        output=str(tmp_path / "runs"),
        progress=False,
        baselines={"bootstrap": 200},
    )
    teacher = tsuika.train(method="finetune", train={"epochs": 3}, **common)
    student = tsuika.train(
        method="distill",
        distill={"teacher": str(teacher.path), "student": TINY_CNN, "unlabelled": str(extra)},
        train={"epochs": 2},
        **common,
    )
    assert student.summary["distillation"]["teacher_cached"] is True
    assert student.summary["distillation"]["unlabelled"] == 3
    assert "undistilled" in student.summary["baselines"]


def test_features_of_another_width_are_matched_through_a_learned_projection(
    teacher_run, data_file, tmp_path
):
    from safetensors.torch import load_file

    folder = tmp_path / "narrow-bert"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    settings = distill_config(
        teacher_run, data_file, tmp_path / "runs", student=str(folder), hidden_weight=0.5
    )
    run = tsuika.train(settings)
    projection = run.model.stages[-2].distill_projection
    assert (projection.in_features, projection.out_features) == (16, 32)
    saved = load_file(str(run.path / "model" / "weights.safetensors"))
    assert not any("distill_projection" in key for key in saved)  # training only
    again = tsuika.load(run.path)
    texts = ["the good movie", "a bad film"]
    assert torch.equal(again.outputs(texts)["logits"], run.outputs(texts)["logits"])


def test_a_second_distillation_reads_the_teacher_s_passes(
    teacher_run, data_file, tmp_path, monkeypatch
):
    """The teacher's pooled passes over the training and test inputs are kept in the
    activation store: a second run with the same teacher and data computes none of them."""
    monkeypatch.setenv("TSUIKA_ACTIVATIONS", str(tmp_path / "store"))
    config = {**distill_config(teacher_run, data_file, tmp_path / "runs"), "baselines": {}}
    first = tsuika.train(config)
    second = tsuika.train(config)
    teacher = [
        e for e in (tmp_path / "store").iterdir() if "teacher" in (e / "about.json").read_text()
    ]
    assert len(teacher) == 2  # training and test inputs, the teacher's way
    assert second.summary["frozen_passes"]["reused"] >= 2
    assert second.summary["test"] == first.summary["test"]
