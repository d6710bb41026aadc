"""The small-data recipe (`method: auto`) and its parts: the contrastive pair loss and method,
a feed repeated within an epoch, a head fitted by a probe before fine-tuning (LP-FT), and
`train.select`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import fast_config, run_folders

import tsuika
import tsuika.feed
from tsuika.api import task_and_data
from tsuika.config import build_config
from tsuika.data.splits import Examples, Splits
from tsuika.feed import Pretrained
from tsuika.feed.cache import CacheSettings
from tsuika.methods import Contrastive, Finetune
from tsuika.methods.contrastive import pair_loss
from tsuika.methods.recipe import SMALL_IMAGE_INPUT, choose
from tsuika.tasks import task_for
from tsuika.train.phase import feed_of


# -- the pair loss ---------------------------------------------------------------------------
def test_pair_loss_is_setfits_cosine_loss_with_positives_and_negatives_weighed_equally():
    features = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    cos01, cos02, cos12 = 1 / math.sqrt(2), 0.0, 1 / math.sqrt(2)
    positives = (cos01 - 1) ** 2  # the one pair of the same class
    negatives = ((cos02 - 0) ** 2 + (cos12 - 0) ** 2) / 2
    expected = (positives + negatives) / 2
    assert pair_loss(features, labels).item() == pytest.approx(expected, abs=1e-6)


def test_pair_loss_is_zero_when_classes_are_orthogonal_and_tight():
    features = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 1.0]])
    assert pair_loss(features, torch.tensor([0, 0, 1, 1])).item() == pytest.approx(0.0)


def test_pair_loss_with_one_kind_of_pair_or_none():
    same = pair_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 1]))
    assert same.item() == pytest.approx(1.0)  # cos 0, target 1
    single = pair_loss(torch.tensor([[1.0, 0.0]], requires_grad=True), torch.tensor([0]))
    assert single.item() == 0.0
    single.backward()  # a batch of one still has a graph


# -- the recipe's choices --------------------------------------------------------------------
def _splits(per_class: int, inputs=None) -> Splits:
    labels = ["a", "b"] * per_class
    inputs = inputs or [f"text {i}" for i in range(len(labels))]
    train = Examples(inputs, {"label": labels})
    return Splits(train, Examples([], {"label": []}), Examples([], {"label": []}))


def _choice(per_class: int, model_kind: str = "text-encoder", inputs=None, **tree):
    config = build_config({"model": "minilm-l6", **tree})
    task = task_for(config)
    splits = _splits(per_class, inputs)
    recipe = choose(config, task, splits, model_kind)
    return recipe, recipe.applied(config)


@pytest.mark.parametrize("per_class,epochs", [(1, 8), (8, 8), (31, 8), (32, 16), (128, 16)])
def test_few_texts_per_class_get_contrastive_pairs_and_a_fixed_schedule(per_class, epochs):
    recipe, config = _choice(per_class)
    assert config.method == "contrastive" and config.train.epochs == epochs
    assert config.train.select == "last" and config.train.patience is None
    assert f"{per_class} examples" in recipe.reason and f"{epochs} epochs" in recipe.reason


def test_many_texts_per_class_get_fine_tuning_from_a_probes_head():
    recipe, config = _choice(512)
    assert config.method == "finetune" and config.finetune.head_init == "probe"
    assert config.finetune.freeze == 1  # the embeddings: cached
    assert "512 examples" in recipe.reason


def test_what_the_user_set_wins_over_the_recipe():
    _, config = _choice(8, train={"epochs": 3, "lr": 0.5})
    assert config.method == "contrastive"
    assert config.train.epochs == 3 and config.train.lr == 0.5
    assert config.train.select == "last"  # the rest still comes from the recipe


def test_small_images_are_read_at_a_smaller_size_unless_set():
    small = [torch.zeros(3, 28, 28, dtype=torch.uint8)] * 20
    _, config = _choice(10, "image-encoder", small, model="efficientnet-lite0")
    assert config.data.image_size == SMALL_IMAGE_INPUT
    assert config.finetune.batchnorm == "frozen" and config.finetune.head_init == "probe"
    _, config = _choice(
        10, "image-encoder", small, model="efficientnet-lite0", data={"image_size": 96}
    )
    assert config.data.image_size == 96
    large = [torch.zeros(3, 300, 400, dtype=torch.uint8)] * 20
    recipe, config = _choice(10, "image-encoder", large, model="efficientnet-lite0")
    assert config.data.image_size is None and "px" not in recipe.reason


def test_other_tasks_keep_transfer_learning():
    recipe, config = _choice(8, task="regression")
    assert config.method == "transfer" and "regression" in recipe.reason


# -- end to end ------------------------------------------------------------------------------
def test_train_without_a_method_says_what_it_chose_and_records_it(
    tiny_bert_dir: Path, tiny_csv: Path, tmp_path: Path, capsys
):
    config = fast_config(tiny_bert_dir, tiny_csv, tmp_path / "runs", progress=True, report=True)
    del config["method"]
    del config["train"]  # the recipe's schedule
    run = tsuika.train(config)
    err = capsys.readouterr().err
    assert "method auto → contrastive" in err
    assert run.summary["recipe"]["method"] == "contrastive"
    assert "examples in the smallest class" in run.summary["recipe"]["reason"]
    saved = (run.path / "config.yaml").read_text(encoding="utf-8")
    assert "method: contrastive" in saved  # resuming trains the same method
    assert run.summary["training"]["best_epoch"] == run.summary["training"]["epochs_run"]
    assert "Chosen by <code>method: auto</code>" in (run.path / "report.html").read_text()


def test_the_recipe_applies_to_a_config_file_and_what_it_sets_wins(
    tiny_bert_dir: Path, tiny_csv: Path, tmp_path: Path
):
    import yaml

    from tsuika.cli import main

    config = fast_config(tiny_bert_dir, tiny_csv, tmp_path / "runs", train={"epochs": 2})
    del config["method"]
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["train", str(config_file), "train.lr=0.02", "--quiet"]) == 0
    (folder,) = run_folders(tmp_path / "runs")
    saved = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    assert saved["method"] == "contrastive"
    assert saved["train"]["select"] == "last"  # from the recipe
    assert saved["finetune"]["head_init"] == "probe"
    assert saved["train"]["epochs"] == 2 and saved["train"]["batch_size"] == 8  # the file's
    assert saved["train"]["lr"] == 0.02  # the command line's


def test_select_last_keeps_the_final_epoch(tiny_bert_dir: Path, tiny_csv: Path, tmp_path: Path):
    config = fast_config(
        tiny_bert_dir, tiny_csv, tmp_path / "runs", train={"epochs": 4, "select": "last"}
    )
    run = tsuika.train(config)
    assert run.summary["training"]["best_epoch"] == 4


# -- the parts -------------------------------------------------------------------------------
def _prepared(method_class, tiny_bert_dir: Path, tiny_csv: Path, tmp_path: Path, **tree):
    config = build_config(
        {**fast_config(tiny_bert_dir, tiny_csv, tmp_path), "finetune": {"freeze": 1}, **tree}
    )
    task, splits = task_and_data(config)
    method = method_class(config, task)
    model = method.build_model(config)
    method.prepare(model)
    return method, model, feed_of(model, task, splits.train)


def test_a_repeated_feed_is_views_of_the_same_examples(tiny_bert_dir, tiny_csv, tmp_path):
    _, _, feed = _prepared(Finetune, tiny_bert_dir, tiny_csv, tmp_path)
    n = len(feed)
    twice = feed.repeated(3)
    assert len(twice) == 3 * n and twice.lengths == feed.lengths * 3
    again, first = twice.batch([n + 2]), feed.batch([2])
    assert torch.equal(again.state["input_ids"], first.state["input_ids"])
    assert torch.equal(again.targets["label"], first.targets["label"])
    assert feed.repeated(1) is feed


def test_a_probe_fits_the_head_before_fine_tuning_and_touches_nothing_else(
    tiny_bert_dir, tiny_csv, tmp_path
):
    method, model, feed = _prepared(
        Finetune,
        tiny_bert_dir,
        tiny_csv,
        tmp_path,
        method="finetune",
        finetune={"freeze": 1, "head_init": "probe"},
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    everything = feed.batch(list(range(len(feed))))

    def head_loss() -> float:
        model.eval()
        with torch.no_grad():
            return method.task.loss(model(everything.state), everything.targets).item()

    untrained = head_loss()
    method.precompute(model, feed, CacheSettings(mode="memory"), "train")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    method.before_fit(model, Pretrained(model, {"train": feed}))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    head = f"stages.{model.num_stages - 1}."
    assert changed and all(n.startswith(head) for n in changed)
    # The head is solved in closed form with its regularisation chosen by cross-validation:
    # measured 0.54 against 0.70 untrained (2026-12-05), 27 of 28 training examples right.
    assert head_loss() < 0.85 * untrained
    model.eval()
    with torch.no_grad():
        logits = model(everything.state)["logits"]
    right = (logits.argmax(-1) == everything.targets["label"]).float().mean().item()
    assert right >= 0.9


def test_the_probe_baseline_and_the_probes_head_share_one_pass_per_split(
    tiny_bert_dir: Path, tiny_csv: Path, tmp_path: Path, monkeypatch
):
    passes = []
    real = tsuika.feed.gather_outputs

    def counted(model, feed, *args, **kwargs):
        if kwargs.get("stop") == model.num_stages - 1:  # pooled features
            passes.append(len(feed))
        return real(model, feed, *args, **kwargs)

    monkeypatch.setattr(tsuika.feed, "gather_outputs", counted)
    config = fast_config(
        tiny_bert_dir,
        tiny_csv,
        tmp_path,
        method="finetune",
        finetune={"freeze": 1, "head_init": "probe"},
        baselines={"probe": True},
        # Passes within the run: none read from the suite's activation store.
        train={"epochs": 1, "cache_across_runs": False},
    )
    run = tsuika.train(config)
    assert "probe" in run.summary["baselines"]
    data = run.summary["data"]
    assert sorted(passes) == sorted([data["train"], data["validation"], data["test"]])


def test_contrastive_body_learns_from_the_pairs_and_the_head_from_the_labels(
    tiny_bert_dir, tiny_csv, tmp_path
):
    method, model, feed = _prepared(
        Contrastive, tiny_bert_dir, tiny_csv, tmp_path, method="contrastive"
    )
    model.eval()  # no dropout: the two passes below compute the same numbers
    batch = feed.batch(list(range(16)))
    out = method.step(model, batch)
    out["loss"].backward()
    step_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    pooled_at = model.num_stages - 1
    features = model(batch.state, 0, pooled_at)["features"]
    pair_loss(features, batch.targets["label"]).backward()
    head = f"stages.{pooled_at}."
    body = {n for n in step_grads if not n.startswith(head)}
    assert body and any(n.startswith(head) for n in step_grads)
    for name in body:  # the cross-entropy on detached features never reaches the body
        assert torch.allclose(step_grads[name], dict(model.named_parameters())[name].grad)


def test_contrastive_epochs_hold_at_least_128_examples_in_random_batches(
    tiny_bert_dir, tiny_csv, tmp_path
):
    method, model, feed = _prepared(
        Contrastive, tiny_bert_dir, tiny_csv, tmp_path, method="contrastive"
    )
    settings = CacheSettings(mode="memory")
    train = method.precompute(model, feed, settings, "train")
    assert len(train) >= 128 and len(train) % len(feed) == 0
    assert train.lengths is None  # not length buckets: new pairs every epoch
    assert len(method.precompute(model, feed, settings, "val")) == len(feed)


def test_inspect_without_a_method_asks_for_one(tiny_bert_dir, capsys):
    from tsuika.cli import main

    assert main(["inspect", str(tiny_bert_dir)]) == 2
    err = capsys.readouterr().err
    assert "method `auto` is chosen from the training data" in err and "finetune" in err


@pytest.mark.parametrize("budget, method", [(1e-6, "transfer"), (None, "contrastive")])
def test_the_recipe_keeps_within_its_budget_and_says_what_it_gave_up(
    tiny_bert_dir: Path, tiny_csv: Path, tmp_path: Path, budget, method
):
    config = fast_config(tiny_bert_dir, tiny_csv, tmp_path / "runs")
    del config["method"]
    config["train"] = {"budget_minutes": budget}
    run = tsuika.train(config)
    assert run.summary["method"] == method
    estimate = run.summary["estimate"]
    assert estimate["seconds"] > 0 and estimate["forward_seconds_per_example"] > 0
    if budget is None:
        assert estimate["cuts"] == [] and estimate["step_seconds_per_example"] > 0
    else:
        # Even one epoch is over a budget of 60 µs: first the epochs, then the method go.
        assert "→ 1 epochs" in estimate["cuts"][0]
        assert "transfer (a head on frozen features) instead" in estimate["cuts"][1]
        assert "transfer (a head on frozen features) instead" in run.summary["recipe"]["reason"]
        assert estimate["step_seconds_per_example"] == 0.0  # nothing below the head trains
