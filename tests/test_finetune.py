"""Fine-tuning: what trains (freeze settings, optimizer state, BatchNorm/dropout of frozen
stages), how fast (layer decay, group rates, the warmup/decay schedule), when (gradual
unfreezing), which weights are kept (early stopping), the frozen-prefix cache, `inspect`, and
the overfitting verdict."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import csv_text, fast_config, sentiment_rows
from torch import nn

import tsuika
from tsuika.api import seed_everything
from tsuika.cli import main
from tsuika.config import build_config
from tsuika.errors import TsuikaError
from tsuika.evaluate.verdicts import overfitting_verdict
from tsuika.methods import Finetune
from tsuika.models import load_model
from tsuika.models.base import AdaptableModel
from tsuika.models.heads import GlobalPooler, Head
from tsuika.train.feed import Feed, collate_states
from tsuika.train.loop import fit
from tsuika.train.schedule import lr_multiplier

# The tiny BERT's groups, shallow → deep; the pooler has no parameters.
GROUPS = ["embeddings", "block1", "block2", "pooler", "head"]
TEXTS = ["a superb and wonderful film", "an awful boring plot", "the acting was lovely"]


def finetune_run(base: dict[str, Any], train: dict | None = None, **finetune: Any) -> tsuika.Run:
    """`tsuika.train(method="finetune")` on the tiny BERT, with backbone rates large enough
    that every trained tensor visibly moves in two epochs."""
    config = {
        **base,
        "method": "finetune",
        "finetune": finetune,
        "train": {**base["train"], "epochs": 2, "backbone_lr": 1e-3, **(train or {})},
    }
    return tsuika.train(config)


def read_history(run_path: Path, phase: str = "finetune") -> list[dict]:
    """The epochs of one phase, from the run's `metrics.jsonl`."""
    records = [json.loads(line) for line in (run_path / "metrics.jsonl").open()]
    return [r for r in records if r["phase"] == phase]


def stage_state(model: AdaptableModel, index: int) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.stages[index].state_dict().items()}


def finetune_method(model_dir: Path, **finetune: Any) -> Finetune:
    config = build_config(
        {
            "model": str(model_dir),
            "method": "finetune",
            "finetune": finetune,
            "train": {"lr": 1e-2, "backbone_lr": 1e-3},
        }
    )
    return Finetune(config)


def rates_by_group(method: Finetune, model: AdaptableModel) -> dict[str, float]:
    """Group name → learning rate, from the optimizer groups the method builds."""
    rates: dict[str, float] = {}
    for group in method.param_groups(model):
        assert rates.setdefault(group["name"], group["lr"]) == group["lr"]
    return rates


def one_step(model: AdaptableModel, optimizer: torch.optim.Optimizer) -> None:
    """One forward/backward/AdamW step of cross-entropy on three texts."""
    items = model.preprocess.encode(TEXTS)
    logits = model(model.preprocess.collate(items))["logits"]
    loss = nn.functional.cross_entropy(logits, torch.tensor([1, 0, 1]))
    loss.backward()
    optimizer.step()


# -- 1. what a `freeze` setting freezes ------------------------------------------------------


@pytest.mark.parametrize(
    ("freeze", "frozen"),
    [
        (0, set()),
        (1, {"embeddings"}),
        (2, {"embeddings", "block1"}),
        (4, {"embeddings", "block1", "block2"}),  # the 4th group is the parameter-free pooler
        ("all-but-head", {"embeddings", "block1", "block2"}),
        (["embeddings", "block1"], {"embeddings", "block1"}),
        (["block[12]"], {"block1", "block2"}),  # a pattern; the embeddings below still train
    ],
)
def test_freeze_changes_exactly_the_unfrozen_groups(base_config, tiny_bert_dir, freeze, frozen):
    # The run seeds before building the model: the same seed rebuilds its initial head.
    seed_everything(0)
    initial = load_model(str(tiny_bert_dir), 2)
    run = finetune_run(base_config, freeze=freeze)

    for index, name in enumerate(GROUPS):
        before, after = stage_state(initial, index), stage_state(run.model, index)
        assert before.keys() == after.keys()
        if name == "pooler":
            assert not after  # nothing to train or compare
        for key, value in before.items():
            if name in frozen:
                assert torch.equal(after[key], value), f"frozen {name}.{key} changed"
            else:
                assert not torch.equal(after[key], value), f"trained {name}.{key} did not move"
    trained = [name for name in GROUPS if name not in frozen and name != "pooler"]
    assert run.summary["parameters"]["trained_groups"] == trained
    # The run folder holds the trained groups; the rest is rebuilt from the pretrained source.
    loaded = tsuika.load(run.path)
    for index in range(len(GROUPS)):
        for key, value in stage_state(run.model, index).items():
            assert torch.equal(stage_state(loaded.model, index)[key], value), (index, key)


def test_freeze_pattern_that_matches_no_group_is_an_error(base_config):
    with pytest.raises(TsuikaError, match="'block9'") as err:
        finetune_run(base_config, freeze=["embeddings", "block9"])
    assert "embeddings, block1, block2, pooler" in str(err.value)  # the groups there are


def test_freezing_more_groups_than_the_model_has_is_an_error(base_config):
    with pytest.raises(TsuikaError, match=r"finetune.freeze=5 .* 4 groups below the head"):
        finetune_run(base_config, freeze=5)


@pytest.mark.xfail(
    strict=True,
    reason="BUG: FinetuneConfig.freeze accepts negative integers; freeze=-1 silently trains "
    "everything (range(-1) is empty) instead of failing validation",
)
def test_negative_freeze_is_rejected():
    with pytest.raises(TsuikaError, match="freeze"):
        build_config({"method": "finetune", "finetune": {"freeze": -1}})


# -- 2. frozen parameters get no gradient and no optimizer state ------------------------------


@pytest.mark.parametrize("unfreeze_every", [None, 2])
def test_frozen_parameters_get_no_gradient_and_no_optimizer_state(tiny_bert_dir, unfreeze_every):
    torch.manual_seed(0)
    model = load_model(str(tiny_bert_dir), 2)
    method = finetune_method(tiny_bert_dir, freeze=2, unfreeze_every=unfreeze_every)
    method.prepare(model)
    optimizer = torch.optim.AdamW(method.param_groups(model))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    one_step(model, optimizer)

    # Gradual unfreezing starts with the head alone; block2 is in the optimizer (it will
    # unfreeze) but must not move, not even by weight decay, before it does.
    trains = {"block2", "head"} if unfreeze_every is None else {"head"}
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    with_state = {id(p) for p in optimizer.state}
    for group in model.layer_groups():
        for name, param in group.module.named_parameters():
            where = f"{group.name}.{name}"
            full = f"stages.{group.index}.{name}"
            if group.name in trains:
                assert param.requires_grad and param.grad is not None, where
                assert id(param) in with_state, where
                assert not torch.equal(param, before[full]), where
            else:
                assert not param.requires_grad and param.grad is None, where
                assert id(param) not in with_state, where
                assert torch.equal(param, before[full]), where
            # Frozen-for-the-whole-run groups are not even in the optimizer.
            assert (id(param) in in_optimizer) == (group.name in {"block2", "head"}), where


def test_weight_decay_applies_to_matrices_only(tiny_bert_dir):
    model = load_model(str(tiny_bert_dir), 2)
    method = finetune_method(tiny_bert_dir, freeze=0)
    method.prepare(model)
    groups = method.param_groups(model)
    assert {g["name"] for g in groups} == {"embeddings", "block1", "block2", "head"}
    for group in groups:
        dims = {p.dim() for p in group["params"]}
        if group["weight_decay"] > 0:
            assert group["weight_decay"] == 0.01 and min(dims) >= 2, group["name"]
        else:
            assert dims == {1}, group["name"]  # biases and LayerNorm scales
    listed = [p for g in groups for p in g["params"]]
    assert len(listed) == len({id(p) for p in listed}) == len(list(model.parameters()))


# -- 3. frozen BatchNorm and dropout keep their eval behaviour --------------------------------


class ConvStage(nn.Module):
    """{pixels|hidden} → {hidden}: conv, BatchNorm, ReLU, dropout."""

    def __init__(self, key: str, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.key = key
        self.conv = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels_out)
        self.drop = nn.Dropout(0.5)

    def forward(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"hidden": self.drop(torch.relu(self.norm(self.conv(state[self.key]))))}


def conv_model() -> AdaptableModel:
    torch.manual_seed(0)
    stages = [
        ("stem", ConvStage("pixels", 3, 8)),
        ("block1", ConvStage("hidden", 8, 8)),
        ("pooler", GlobalPooler()),
        ("head", Head(8, 3)),
    ]
    return AdaptableModel(stages=stages, spec={}, preprocess=None)


def image_feed(n: int, seed: int) -> Feed:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, 3, 6, 6, generator=generator)
    labels = torch.randint(0, 3, (n,), generator=generator)
    return Feed([{"pixels": p} for p in pixels], labels, 0, collate_states)


def buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.named_buffers()}


def test_frozen_batchnorm_statistics_and_dropout_stay_in_eval_mode():
    model = conv_model()
    config = build_config({"method": "finetune", "finetune": {"freeze": ["stem"]}})
    method = Finetune(config)
    method.prepare(model)
    optimizer = torch.optim.AdamW(method.param_groups(model), lr=1e-2)
    stem, block1 = model.stages[0], model.stages[1]
    stem_stats, block1_stats = buffers(stem), buffers(block1)
    stem_weights = {k: v.clone() for k, v in stem.named_parameters()}

    model.train()
    assert not stem.training and not stem.norm.training and not stem.drop.training
    assert block1.training and block1.norm.training and block1.drop.training
    batch = collate_states([{"pixels": p} for p in torch.randn(4, 3, 6, 6)])
    # A frozen stage is deterministic in train mode: no dropout, running statistics used.
    torch.testing.assert_close(stem(batch)["hidden"], stem(batch)["hidden"], rtol=0, atol=0)
    for _ in range(3):
        optimizer.zero_grad()
        logits = model(batch)["logits"]
        nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
        optimizer.step()

    for key, value in stem_stats.items():
        assert torch.equal(buffers(stem)[key], value), key
    for key, value in stem_weights.items():
        assert torch.equal(dict(stem.named_parameters())[key], value), key
    assert block1.norm.num_batches_tracked.item() == block1_stats["norm.num_batches_tracked"] + 3
    assert not torch.equal(block1.norm.running_mean, block1_stats["norm.running_mean"])
    assert not torch.equal(block1.norm.running_var, block1_stats["norm.running_var"])


def test_the_training_loop_keeps_frozen_batchnorm_statistics():
    model = conv_model()
    config = build_config(
        {
            "method": "finetune",
            "finetune": {"freeze": 1},
            "train": {"epochs": 2, "batch_size": 4, "lr": 1e-2, "backbone_lr": 1e-2},
        }
    )
    method = Finetune(config)
    method.prepare(model)
    stem_stats, block1_stats = buffers(model.stages[0]), buffers(model.stages[1])
    result = fit(model, method, image_feed(12, 1), image_feed(6, 2), config.train, seed=0)

    assert result.steps == 6
    for key, value in stem_stats.items():
        assert torch.equal(buffers(model.stages[0])[key], value), key
    # Both epochs ran BatchNorm in train mode (whichever epoch's weights were kept).
    tracked = model.stages[1].norm.num_batches_tracked.item()
    assert tracked in {3, 6} and tracked == 3 * result.best_epoch
    assert not torch.equal(model.stages[1].norm.running_mean, block1_stats["norm.running_mean"])
    assert model.training is False or not model.stages[0].training


# -- 4. learning rates: per group, and over steps ------------------------------------------


def test_layer_decay_counts_depth_over_groups_with_parameters(tiny_bert_dir):
    model = load_model(str(tiny_bert_dir), 2)
    method = finetune_method(tiny_bert_dir, layer_decay=0.5)
    method.prepare(model)
    assert rates_by_group(method, model) == pytest.approx(
        {"head": 1e-2, "block2": 1e-3, "block1": 5e-4, "embeddings": 2.5e-4}, rel=1e-12
    )


def test_layer_decay_depth_includes_frozen_groups(tiny_bert_dir):
    model = load_model(str(tiny_bert_dir), 2)
    method = finetune_method(tiny_bert_dir, layer_decay=0.5, freeze=1)
    method.prepare(model)
    assert rates_by_group(method, model) == pytest.approx(
        {"head": 1e-2, "block2": 1e-3, "block1": 5e-4}, rel=1e-12
    )


def test_group_lr_overrides_and_zero_freezes(tiny_bert_dir):
    model = load_model(str(tiny_bert_dir), 2)
    method = finetune_method(tiny_bert_dir, layer_decay=0.5, group_lr={"block1": 7e-4})
    method.prepare(model)
    assert rates_by_group(method, model) == pytest.approx(
        {"head": 1e-2, "block2": 1e-3, "block1": 7e-4, "embeddings": 2.5e-4}, rel=1e-12
    )

    model = load_model(str(tiny_bert_dir), 2)
    method = finetune_method(tiny_bert_dir, group_lr={"block*": 0, "embeddings": 2e-5})
    method.prepare(model)
    assert rates_by_group(method, model) == pytest.approx({"head": 1e-2, "embeddings": 2e-5})
    for group in model.layer_groups():
        assert group.trainable is (group.name in {"embeddings", "head"}), group.name
    assert method.cache_boundary(model) == 0  # the embeddings train: nothing to cache

    model = load_model(str(tiny_bert_dir), 2)
    method = finetune_method(tiny_bert_dir, group_lr={"embeddings": 0})
    method.prepare(model)
    assert set(rates_by_group(method, model)) == {"block1", "block2", "head"}
    assert method.cache_boundary(model) == 1


def test_group_lr_pattern_that_matches_no_group_is_an_error(tiny_bert_dir):
    model = load_model(str(tiny_bert_dir), 2)
    method = finetune_method(tiny_bert_dir, group_lr={"layer1": 1e-4})
    with pytest.raises(TsuikaError, match="'layer1' matches no group"):
        method.prepare(model)


def test_warmup_ramps_to_one_without_a_zero_step():
    assert [lr_multiplier(s, 20, 4, "cosine") for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_multiplier(0, 20, 0, "cosine") == 1.0  # no warmup: the first step is full
    assert lr_multiplier(3, 4, 4, "cosine") == 1.0  # all warmup
    assert lr_multiplier(7, 4, 4, "linear") == 1.0  # nothing left to decay over


def test_decay_schedules_after_warmup():
    total, warmup = 24, 4  # 20 decay steps
    cosine = [lr_multiplier(s, total, warmup, "cosine") for s in range(warmup, total + 1)]
    assert cosine[0] == 1.0
    assert cosine[10] == pytest.approx(0.5)  # halfway through the decay
    assert cosine[-1] == pytest.approx(0.0, abs=1e-12)
    assert cosine[-2] == pytest.approx(0.5 * (1 + math.cos(math.pi * 19 / 20)))
    assert all(a > b for a, b in zip(cosine, cosine[1:], strict=False))

    linear = [lr_multiplier(s, total, warmup, "linear") for s in range(warmup, total + 1)]
    assert linear == pytest.approx([1 - i / 20 for i in range(21)])

    assert {lr_multiplier(s, total, warmup, "constant") for s in range(warmup, 40)} == {1.0}


@pytest.mark.parametrize(
    ("schedule", "grad_accum"), [("cosine", 1), ("linear", 2), ("constant", 1)]
)
def test_recorded_learning_rate_follows_the_schedule(base_config, schedule, grad_accum):
    train = {"epochs": 5, "batch_size": 4, "grad_accum": grad_accum, "warmup": 0.3}
    run = finetune_run(base_config, train={**train, "schedule": schedule}, layer_decay=0.5)
    history = read_history(run.path)
    n_train = run.summary["data"]["train"]  # 28 examples: 7 batches of 4
    per_epoch = math.ceil(math.ceil(n_train / 4) / grad_accum)
    total = 5 * per_epoch
    warmup = int(0.3 * total)
    assert [r["step"] for r in history] == [per_epoch * e for e in range(1, 6)]
    # The recorded rate is that of the first optimizer group: the embeddings, at depth 3.
    base = 1e-3 * 0.5**2
    for record in history:
        expected = base * lr_multiplier(record["step"] - 1, total, warmup, schedule)
        assert record["lr"] == pytest.approx(expected, rel=1e-9), record["epoch"]
    if schedule != "constant":
        assert history[-1]["lr"] < history[1]["lr"] < base
