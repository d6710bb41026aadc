"""Fine-tuning: what trains (freeze settings, optimizer state, BatchNorm/dropout of frozen
stages), how fast (layer decay, group rates, the warmup/decay schedule), when (gradual
unfreezing), which weights are kept (early stopping), the frozen-prefix cache, `inspect`, and
the overfitting verdict."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import csv_text, run_folders, sentiment_rows
from torch import nn

import tsuika
from tsuika.api import task_and_data
from tsuika.cli import main
from tsuika.config import HeadConfig, build_config
from tsuika.errors import TsuikaError
from tsuika.evaluate.verdicts import overfitting_verdict
from tsuika.feed import Feed, collate_states, gather_outputs, input_feed
from tsuika.feed.cache import DiskStore
from tsuika.methods import Finetune
from tsuika.models import Request, load_model
from tsuika.models.base import AdaptableModel
from tsuika.models.heads import GlobalPooler, Head
from tsuika.tasks import Classify
from tsuika.train import phase as phase_module
from tsuika.train.hooks import FitStart, Hook
from tsuika.train.loop import FitResult, fit
from tsuika.train.phase import seed_everything
from tsuika.train.schedule import lr_multiplier

# The tiny BERT's groups, shallow → deep; the pooler has no parameters.
GROUPS = ["embeddings", "block1", "block2", "pooler", "head"]
TEXTS = ["a superb and wonderful film", "an awful boring plot", "the acting was lovely"]
# The toy data's task: one label column, two classes (sorted, as `task.learn` names them).
SENTIMENT = Classify(["label"], {"label": ["neg", "pos"]})
# The conv model's task: three classes.
THREE_CLASSES = Classify(["label"], {"label": ["a", "b", "c"]})


def tiny_bert(model_dir: Path) -> AdaptableModel:
    """The tiny BERT with a new two-class linear head (what a run on the toy data builds)."""
    return load_model(str(model_dir), Request(lambda width: Head(width, 2), HeadConfig()))


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
    return Finetune(config, SENTIMENT)


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
    initial = tiny_bert(tiny_bert_dir)
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


@pytest.mark.parametrize(
    ("finetune", "message"),
    [
        ({"freeze": ["block9"]}, "finetune.freeze pattern 'block9' matches no group"),
        ({"freeze": 5}, "finetune.freeze=5 but the model has 4 groups below the head"),
        ({"group_lr": {"layer1": 1e-4}}, "finetune.group_lr: 'layer1' matches no group"),
    ],
)
def test_a_bad_freeze_setting_leaves_no_run_folder(base_config, finetune, message):
    with pytest.raises(TsuikaError, match=re.escape(message)):
        finetune_run(base_config, **finetune)
    assert run_folders(Path(base_config["output"])) == []


def test_negative_freeze_is_rejected():
    with pytest.raises(TsuikaError, match="freeze"):
        build_config({"method": "finetune", "finetune": {"freeze": -1}})


# -- 2. frozen parameters get no gradient and no optimizer state ------------------------------


@pytest.mark.parametrize("unfreeze_every", [None, 2])
def test_frozen_parameters_get_no_gradient_and_no_optimizer_state(tiny_bert_dir, unfreeze_every):
    torch.manual_seed(0)
    model = tiny_bert(tiny_bert_dir)
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
    model = tiny_bert(tiny_bert_dir)
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
    return Feed([{"pixels": p} for p in pixels], {"label": labels}, 0, collate_states)


class AfterEachEpoch(Hook):
    """Calls `see()` once each epoch is over (saved), as the metrics log is called."""

    def __init__(self, see) -> None:
        self.see = see

    def epoch_saved(self, record: dict) -> None:
        self.see()


def buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.named_buffers()}


def test_frozen_batchnorm_statistics_and_dropout_stay_in_eval_mode():
    model = conv_model()
    config = build_config({"method": "finetune", "finetune": {"freeze": ["stem"]}})
    method = Finetune(config, THREE_CLASSES)
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
    method = Finetune(config, THREE_CLASSES)
    method.prepare(model)
    stem_stats, block1_stats = buffers(model.stages[0]), buffers(model.stages[1])
    result = fit(model, method, image_feed(12, 1), image_feed(6, 2), config.train, seed=0)

    assert result.steps == 6
    for key, value in stem_stats.items():
        assert torch.equal(buffers(model.stages[0])[key], value), key
    # block1's BatchNorm ran in train mode: 3 batches per epoch up to the epoch that was kept
    # (buffers are part of the best-epoch snapshot).
    tracked = model.stages[1].norm.num_batches_tracked.item()
    assert tracked in {3, 6} and tracked == 3 * result.best_epoch
    assert not torch.equal(model.stages[1].norm.running_mean, block1_stats["norm.running_mean"])


def test_a_stage_that_unfreezes_switches_its_batchnorm_to_train_mode():
    model = conv_model()
    config = build_config(
        {
            "method": "finetune",
            "finetune": {"unfreeze_every": 1},
            "train": {"epochs": 3, "batch_size": 4, "lr": 1e-2, "backbone_lr": 1e-2},
        }
    )
    method = Finetune(config, THREE_CLASSES)
    method.prepare(model)
    tracked: list[tuple[int, int]] = []

    def snapshot() -> None:
        stem, block1 = model.stages[0].norm, model.stages[1].norm
        tracked.append((stem.num_batches_tracked.item(), block1.num_batches_tracked.item()))

    hooks = [AfterEachEpoch(snapshot)]
    result = fit(model, method, image_feed(12, 1), image_feed(6, 2), config.train, 0, hooks)
    # Epoch 1: the head alone; epoch 2: block1 too; epoch 3: the stem too (3 batches each).
    assert tracked == [(0, 0), (0, 3), (3, 6)]
    events = [r.get("events") for r in result.history]
    assert events == [None, ["unfroze block1"], ["unfroze stem"]]


# -- 4. learning rates: per group, and over steps ------------------------------------------


def test_layer_decay_counts_depth_over_groups_with_parameters(tiny_bert_dir):
    model = tiny_bert(tiny_bert_dir)
    method = finetune_method(tiny_bert_dir, layer_decay=0.5)
    method.prepare(model)
    assert rates_by_group(method, model) == pytest.approx(
        {"head": 1e-2, "block2": 1e-3, "block1": 5e-4, "embeddings": 2.5e-4}, rel=1e-12
    )


def test_layer_decay_depth_includes_frozen_groups(tiny_bert_dir):
    model = tiny_bert(tiny_bert_dir)
    method = finetune_method(tiny_bert_dir, layer_decay=0.5, freeze=1)
    method.prepare(model)
    assert rates_by_group(method, model) == pytest.approx(
        {"head": 1e-2, "block2": 1e-3, "block1": 5e-4}, rel=1e-12
    )


def test_group_lr_overrides_and_zero_freezes(tiny_bert_dir):
    model = tiny_bert(tiny_bert_dir)
    method = finetune_method(tiny_bert_dir, layer_decay=0.5, group_lr={"block1": 7e-4})
    method.prepare(model)
    assert rates_by_group(method, model) == pytest.approx(
        {"head": 1e-2, "block2": 1e-3, "block1": 7e-4, "embeddings": 2.5e-4}, rel=1e-12
    )

    model = tiny_bert(tiny_bert_dir)
    method = finetune_method(tiny_bert_dir, group_lr={"block*": 0, "embeddings": 2e-5})
    method.prepare(model)
    assert rates_by_group(method, model) == pytest.approx({"head": 1e-2, "embeddings": 2e-5})
    for group in model.layer_groups():
        assert group.trainable is (group.name in {"embeddings", "head"}), group.name
    assert method.cache_boundary(model) == 0  # the embeddings train: nothing to cache

    model = tiny_bert(tiny_bert_dir)
    method = finetune_method(tiny_bert_dir, group_lr={"embeddings": 0})
    method.prepare(model)
    assert set(rates_by_group(method, model)) == {"block1", "block2", "head"}
    assert method.cache_boundary(model) == 1


def test_group_lr_pattern_that_matches_no_group_is_an_error(tiny_bert_dir):
    model = tiny_bert(tiny_bert_dir)
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
    assert all(a > b for a, b in itertools.pairwise(cosine))

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
    assert history[0]["lr"] == pytest.approx(base * min(1.0, per_epoch / warmup), rel=1e-9)
    for record in history:
        expected = base * lr_multiplier(record["step"] - 1, total, warmup, schedule)
        assert record["lr"] == pytest.approx(expected, rel=1e-9), record["epoch"]
    if schedule != "constant":
        assert history[-1]["lr"] < history[1]["lr"] < base


def test_a_config_where_nothing_trains_is_a_user_error(base_config):
    with pytest.raises(TsuikaError, match=r"finetune: nothing would train \(every group frozen"):
        finetune_run(base_config, freeze="all-but-head", group_lr={"head": 0})


# -- 5. gradual unfreezing ---------------------------------------------------------------------


def test_gradual_unfreezing_trains_one_more_group_every_two_epochs(base_config, tiny_bert_dir):
    """Snapshots after every epoch (through `fit`'s log callback): a group's weights stay
    bit-identical until the epoch it unfreezes, then move."""
    config = build_config(
        {
            **base_config,
            "method": "finetune",
            "finetune": {"unfreeze_every": 2},
            "train": {**base_config["train"], "epochs": 8, "backbone_lr": 1e-3},
        }
    )
    seed_everything(config.seed)
    task, splits = task_and_data(config)
    model = load_model(
        str(tiny_bert_dir), Request(lambda width: task.head(width, config.head), config.head)
    )
    initial = {i: stage_state(model, i) for i in range(len(GROUPS))}
    method = Finetune(config, task)
    method.prepare(model)
    assert [g.name for g in model.layer_groups() if g.trainable] == ["head"]
    assert method.cache_boundary(model) == 0  # the embeddings train eventually: no cache

    moved: list[set[str]] = []

    def snapshot() -> None:
        changed = set()
        for index, name in enumerate(GROUPS):
            state = stage_state(model, index)
            if any(not torch.equal(state[k], v) for k, v in initial[index].items()):
                changed.add(name)
        moved.append(changed)

    train = input_feed(model, splits.train.inputs, task.targets(splits.train))
    val = input_feed(model, splits.val.inputs, task.targets(splits.val))
    result = fit(model, method, train, val, config.train, config.seed, [AfterEachEpoch(snapshot)])

    head, block2, block1 = {"head"}, {"head", "block2"}, {"head", "block2", "block1"}
    everything = {"head", "block2", "block1", "embeddings"}
    assert moved == [head, head, block2, block2, block1, block1, everything, everything]
    events = {r["epoch"]: r["events"] for r in result.history if "events" in r}
    assert events == {3: ["unfroze block2"], 5: ["unfroze block1"], 7: ["unfroze embeddings"]}


def test_gradual_unfreezing_through_train_logs_events_and_stops_at_frozen_groups(base_config):
    run = finetune_run(base_config, train={"epochs": 7}, freeze=1, unfreeze_every=2)
    history = read_history(run.path)
    events = {r["epoch"]: r["events"] for r in history if "events" in r}
    assert events == {3: ["unfroze block2"], 5: ["unfroze block1"]}  # embeddings stay frozen
    assert run.summary["parameters"]["trained_groups"] == ["block1", "block2", "head"]
    assert "cache" in run.summary["timings"]  # the embeddings never train: cached


def test_gradual_unfreezing_does_not_touch_groups_before_their_epoch(base_config, tiny_bert_dir):
    # Two epochs with unfreeze_every=2: block2 would unfreeze at the start of epoch 3.
    seed_everything(0)
    initial = tiny_bert(tiny_bert_dir)
    run = finetune_run(base_config, train={"epochs": 2}, unfreeze_every=2)
    assert all("events" not in r for r in read_history(run.path))
    for index, name in enumerate(GROUPS[:-1]):
        for key, value in stage_state(initial, index).items():
            assert torch.equal(stage_state(run.model, index)[key], value), (name, key)
    head = stage_state(run.model, 4)
    assert all(not torch.equal(head[k], v) for k, v in stage_state(initial, 4).items())
    trained = run.summary["parameters"]["trained_groups"]
    assert trained == ["head"]
    assert run.summary["parameters"]["trained"] == sum(
        p.numel() for p in run.model.head.parameters()
    )


def test_gradual_unfreezing_ignores_group_rates_of_parameter_free_groups(tiny_bert_dir):
    model = tiny_bert(tiny_bert_dir)
    method = finetune_method(tiny_bert_dir, unfreeze_every=1, group_lr={"*": 1e-4})
    method.prepare(model)
    events = {epoch: method.on_epoch_start(model, epoch) for epoch in range(1, 7)}
    assert events == {
        1: [],
        2: ["unfroze block2"],
        3: ["unfroze block1"],
        4: ["unfroze embeddings"],
        5: [],
        6: [],
    }


# -- 6. early stopping keeps the best epoch's weights ----------------------------------------


@pytest.fixture(scope="module")
def misleading_validation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Toy validation rows, two in three with the wrong label: learning the training data
    makes validation worse after a few epochs."""
    flip = {"pos": "neg", "neg": "pos"}
    rows = sentiment_rows(20, seed=3)
    rows = [(text, flip[label] if i % 3 else label) for i, (text, label) in enumerate(rows)]
    path = tmp_path_factory.mktemp("validation") / "validation.csv"
    path.write_text(csv_text(rows), encoding="utf-8")
    return path


def test_early_stopping_restores_the_best_epochs_weights(base_config, misleading_validation):
    # A constant rate: the trajectory does not depend on the planned number of epochs.
    train = {"epochs": 20, "lr": 0.01, "patience": 2, "schedule": "constant", "warmup": 0}
    config = {
        **base_config,
        "data": {**base_config["data"], "validation": str(misleading_validation)},
    }
    run = finetune_run(config, train=train)
    history, training = read_history(run.path), run.summary["training"]
    best = training["best_epoch"]
    assert training["stopped_early"] is True
    assert training["epochs_run"] == len(history) == best + 2 < 20
    # The best epoch is the highest validation accuracy, ties broken by the lower loss.
    assert best == max(history, key=lambda r: (r["val_accuracy"], -r["val_loss"]))["epoch"]
    assert history[-1]["val_loss"] != pytest.approx(history[best - 1]["val_loss"])

    # The returned model scores the best epoch's validation loss, not the last one's.
    task, splits = task_and_data(build_config(config))
    assert task.labels == run.task.labels == {"label": ["neg", "pos"]}
    val = input_feed(run.model, splits.val.inputs, task.targets(splits.val))
    probs = torch.from_numpy(task.probabilities(gather_outputs(run.model, val))["label"])
    loss = nn.functional.nll_loss(probs.clamp_min(1e-12).log(), val.targets["label"]).item()
    assert loss == pytest.approx(history[best - 1]["val_loss"], abs=1e-5)

    # The same seed for exactly `best` epochs, without early stopping, ends on the same weights.
    same = finetune_run(config, train={**train, "epochs": best, "patience": None})
    assert same.summary["training"]["stopped_early"] is False
    for index in range(len(GROUPS)):
        for key, value in stage_state(same.model, index).items():
            torch.testing.assert_close(stage_state(run.model, index)[key], value, atol=1e-6, rtol=0)


def test_no_early_stop_when_patience_is_not_exhausted(base_config, misleading_validation):
    train = {"epochs": 4, "lr": 0.01, "patience": 10, "schedule": "constant", "warmup": 0}
    config = {
        **base_config,
        "data": {**base_config["data"], "validation": str(misleading_validation)},
    }
    training = finetune_run(config, train=train).summary["training"]
    assert training["epochs_run"] == 4
    assert training["stopped_early"] is False


# -- 7. the frozen-prefix cache changes nothing ----------------------------------------------


@pytest.mark.parametrize(
    ("finetune", "boundary"),
    [({"freeze": 2}, 2), ({"freeze": 1, "unfreeze_every": 1}, 1), ({"freeze": 3}, 4)],
)
def test_prefix_cache_gives_the_same_weights(base_config, tiny_bert_dir, finetune, boundary):
    model = tiny_bert(tiny_bert_dir)
    method = finetune_method(tiny_bert_dir, **finetune)
    method.prepare(model)
    assert method.cache_boundary(model) == boundary

    runs = {}
    for cache in ("auto", "off", "disk"):
        config = {**base_config, "name": f"cache-{cache}"}
        runs[cache] = finetune_run(config, train={"epochs": 3, "cache": cache}, **finetune)
    for cache, run in runs.items():
        assert ("cache" in run.summary["timings"]) is (cache != "off"), cache
        assert not (run.path / "cache").exists(), cache  # removed once the run is complete
        assert not (run.path / "checkpoints").exists(), cache
    for index in range(len(GROUPS)):
        reference = stage_state(runs["off"].model, index)
        for cache in ("auto", "disk"):
            for key, value in stage_state(runs[cache].model, index).items():
                torch.testing.assert_close(value, reference[key], atol=1e-5, rtol=0)
    history = {cache: read_history(run.path) for cache, run in runs.items()}
    for cache in ("auto", "disk"):
        for record, reference in zip(history[cache], history["off"], strict=True):
            assert record["train_loss"] == pytest.approx(reference["train_loss"], abs=1e-5)
            assert record["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-5)


def test_disk_cache_spills_to_the_run_folder_while_training(base_config, monkeypatch):
    """`cache=disk` writes memory-mapped files under `<run>/cache/` during the run."""
    seen: list[list[str]] = []
    original = DiskStore.finish

    def finish(self) -> None:
        original(self)
        seen.append(sorted(p.name for p in self.folder.iterdir()))
        assert "cache" in self.folder.parts

    monkeypatch.setattr(DiskStore, "finish", finish)
    # Within the run: nothing read from the suite's activation store (tests/test_store.py).
    train = {"epochs": 1, "cache": "disk", "cache_across_runs": False}
    run = finetune_run(base_config, train=train, freeze=2)
    assert seen == [["attention_mask.bin", "hidden.bin"]] * 3  # train, validation and test
    assert not (run.path / "cache").exists()


# -- 8. `tsuika inspect` -------------------------------------------------------------------


def inspect_output(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_inspect_with_a_config_file_shows_groups_rates_and_the_cache(
    tiny_bert_dir, tmp_path, capsys
):
    config = tmp_path / "finetune.yaml"
    config.write_text(yaml.safe_dump({"method": "finetune", "train": {"epochs": 6}}))
    code, out = inspect_output(
        [
            "inspect",
            str(tiny_bert_dir),
            str(config),
            "finetune.freeze=1",
            "finetune.unfreeze_every=2",
        ],
        capsys,
    )
    assert code == 0, out
    for name in GROUPS:
        assert name in out
    assert "cached" in out
    assert "unfreezes at epoch 3" in out and "unfreezes at epoch 5" in out


def test_inspect_with_overrides_only(tiny_bert_dir, capsys):
    code, out = inspect_output(
        ["inspect", str(tiny_bert_dir), "method=finetune", "finetune.freeze=2"], capsys
    )
    assert code == 0, out
    for name in GROUPS:
        assert name in out
    assert "cached" in out


# -- 9. the overfitting verdict --------------------------------------------------------------


def epochs(*rows: tuple[float, float, float]) -> list[dict]:
    """(train_loss, val_loss, val_accuracy) per epoch → history records."""
    return [
        {
            "epoch": i + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "train_accuracy": 0.9,
        }
        for i, (train_loss, val_loss, val_accuracy) in enumerate(rows)
    ]


def test_overfitting_is_flagged_when_train_loss_falls_while_val_loss_rises():
    history = epochs((0.9, 0.8, 0.6), (0.5, 0.5, 0.8), (0.3, 0.6, 0.75), (0.1, 0.9, 0.7))
    verdict = overfitting_verdict(history, best_epoch=2, task=SENTIMENT)
    assert verdict["overfitting"] is True
    assert verdict["best_epoch"] == 2
    assert verdict["train_val_gap"] == pytest.approx(0.9 - 0.8)
    assert verdict["text"].startswith("OVERFITTING: after epoch 2")
    assert "0.500 → 0.100" in verdict["text"] and "0.500 → 0.900" in verdict["text"]


@pytest.mark.parametrize(
    ("history", "best"),
    [
        # Still improving: the best epoch is the last one.
        (epochs((0.9, 0.8, 0.6), (0.5, 0.5, 0.8), (0.3, 0.4, 0.9)), 3),
        # Validation loss rises, but so does the training loss (divergence, not overfitting).
        (epochs((0.5, 0.5, 0.8), (0.6, 0.6, 0.7), (0.8, 0.9, 0.6)), 1),
        # Training loss falls but validation loss falls too (accuracy plateaued).
        (epochs((0.5, 0.5, 0.8), (0.4, 0.45, 0.8), (0.3, 0.4, 0.8)), 1),
        # Only one epoch after the best: too early to call.
        (epochs((0.9, 0.8, 0.6), (0.5, 0.5, 0.8), (0.3, 0.9, 0.7)), 2),
    ],
)
def test_overfitting_is_not_flagged_otherwise(history, best):
    verdict = overfitting_verdict(history, best, SENTIMENT)
    assert verdict["overfitting"] is False
    assert verdict["text"].startswith(f"validation peaked at epoch {best} of {len(history)}")


# Planted histories (what `fit` returns) and the verdict the run's summary must carry.
OVERFIT = epochs((0.9, 0.8, 0.6), (0.5, 0.5, 0.8), (0.3, 0.6, 0.75), (0.1, 0.9, 0.7))
FLAT = epochs((0.5, 0.5, 0.8), (0.5, 0.5, 0.8), (0.5, 0.5, 0.8), (0.5, 0.5, 0.8))


@pytest.mark.parametrize(
    ("history", "best", "overfitting", "opening"),
    [
        # Train loss falls (0.5 → 0.1) while val loss rises (0.5 → 0.9) after epoch 2.
        (OVERFIT, 2, True, "OVERFITTING: after epoch 2 training loss kept falling "),
        # Nothing moves after the best epoch: no overfitting.
        (FLAT, 1, False, "validation peaked at epoch 1 of 4; "),
    ],
)
def test_summary_carries_the_overfitting_verdict_of_the_history(
    base_config, monkeypatch, history, best, overfitting, opening
):
    """`tsuika.train` judges the history `fit` returned: plant one through a stand-in `fit`
    and check the summary's verdict against what that history must give."""

    def planted_fit(model, method, train, val, config, seed=0, hooks=(), label="", *args, **kw):
        for hook in hooks:  # the metrics log among them
            hook.fit_started(FitStart(label, method.task, len(history)))
            for record in history:
                hook.epoch_saved(record)
        return FitResult(history=history, best_epoch=best, best_score=0.8, steps=len(history))

    monkeypatch.setattr(phase_module, "fit", planted_fit)
    run = finetune_run(base_config)
    assert read_history(run.path) == [{"phase": "finetune", **r} for r in history]
    assert run.summary["training"]["best_epoch"] == best
    verdict = run.summary["verdicts"]["overfitting"]
    assert verdict["overfitting"] is overfitting
    assert verdict["best_epoch"] == best
    assert verdict["train_val_gap"] == pytest.approx(0.9 - 0.8)
    assert verdict["text"].startswith(opening)
    gap = "train–validation gap there +10.0 accuracy points"
    assert verdict["text"].endswith(f"validation peaked at epoch {best} of 4; {gap}")
    if overfitting:
        assert "(0.500 → 0.100)" in verdict["text"] and "(0.500 → 0.900)" in verdict["text"]
