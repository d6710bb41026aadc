"""The activation store: frozen passes kept across runs, addressed by what they depend on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers import csv_text, fast_config, sentiment_rows
from safetensors.torch import load_file, save_file

import tsuika
from tsuika.cli import main
from tsuika.feed.store import ActivationStore


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A store of this test's own (the suite's shared one would already hold these passes)."""
    folder = tmp_path / "store"
    monkeypatch.setenv("TSUIKA_ACTIVATIONS", str(folder))
    return folder


def _train(tiny_bert_dir: Path, data_file: Path, output: Path, **overrides) -> tsuika.Run:
    return tsuika.train(fast_config(tiny_bert_dir, data_file, output, **overrides))


def _texts() -> list[str]:
    return ["the good movie", "a bad film", "good good", "bad"]


def test_a_second_run_reads_every_frozen_pass_and_gives_the_same_model(
    tiny_bert_dir, tiny_csv, tmp_path, store
):
    first = _train(tiny_bert_dir, tiny_csv, tmp_path / "runs")
    second = _train(tiny_bert_dir, tiny_csv, tmp_path / "runs")
    fresh = _train(tiny_bert_dir, tiny_csv, tmp_path / "runs", train={"cache_across_runs": False})
    # transfer caches train, validation and test at the head: three passes, computed once
    assert first.summary["frozen_passes"] == {"reused": 0, "computed": 3}
    assert second.summary["frozen_passes"] == {"reused": 3, "computed": 0}
    assert "frozen_passes" not in fresh.summary
    assert len(list(store.iterdir())) == 3
    for run in (second, fresh):  # stored = computed: the same numbers, so the same model
        for key, value in first.outputs(_texts()).items():
            assert torch.equal(run.outputs(_texts())[key], value), key
    assert second.summary["test"] == first.summary["test"] == fresh.summary["test"]


def test_a_changed_row_or_weight_is_another_pass(tiny_bert_dir, tmp_path, store):
    rows = sentiment_rows(40)
    data, test = tmp_path / "data.csv", tmp_path / "test.csv"
    data.write_text(csv_text(rows), encoding="utf-8")
    test.write_text(csv_text(sentiment_rows(12, seed=5)), encoding="utf-8")
    _train(tiny_bert_dir, data, tmp_path / "runs", data={"test": str(test)})
    rows[0] = ("good good good movie", rows[0][1])
    data.write_text(csv_text(rows), encoding="utf-8")
    edited = _train(tiny_bert_dir, data, tmp_path / "runs", data={"test": str(test)})
    # the edited row is in the training or the validation split: that pass alone is new
    assert edited.summary["frozen_passes"] == {"reused": 2, "computed": 1}

    changed = tmp_path / "changed-bert"
    shutil.copytree(tiny_bert_dir, changed)
    weights = load_file(changed / "model.safetensors")
    name = next(n for n in weights if "encoder.layer.1" in n and n.endswith("weight"))
    weights[name] = weights[name] + 1e-3
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    other = _train(changed, data, tmp_path / "runs", data={"test": str(test)})
    assert other.summary["frozen_passes"] == {"reused": 0, "computed": 3}


def test_fine_tuning_reads_the_frozen_prefix_and_the_pretrained_features(
    tiny_bert_dir, tiny_csv, tmp_path, store
):
    settings = dict(method="finetune", finetune={"freeze": 1}, train={"epochs": 2})
    first = _train(tiny_bert_dir, tiny_csv, tmp_path / "runs", **settings)
    second = _train(tiny_bert_dir, tiny_csv, tmp_path / "runs", **settings)
    computed = first.summary["frozen_passes"]["computed"]
    # the prefix of three splits, and the pretrained features the baselines read
    assert computed >= 4
    assert second.summary["frozen_passes"] == {"reused": computed, "computed": 0}
    for key, value in first.outputs(_texts()).items():
        assert torch.equal(second.outputs(_texts())[key], value), key


def test_a_damaged_entry_is_computed_again(tiny_bert_dir, tiny_csv, tmp_path, store, capsys):
    first = _train(tiny_bert_dir, tiny_csv, tmp_path / "runs")
    for entry in store.iterdir():
        for part in entry.glob("*.bin"):
            part.write_bytes(part.read_bytes()[:10])  # a full disk, half a copy
    second = _train(tiny_bert_dir, tiny_csv, tmp_path / "runs")
    assert "is damaged" in capsys.readouterr().err
    assert second.summary["frozen_passes"] == {"reused": 0, "computed": 3}
    assert second.summary["test"] == first.summary["test"]


def test_the_least_recently_used_passes_go_beyond_the_limit(tmp_path):
    store = ActivationStore(tmp_path / "store", limit_bytes=9000)
    items = [{"features": torch.full((1000,), float(i))} for i in range(3)]  # 4,000 bytes each
    store.put("a" * 32, items[:1], {"split": "train"})
    store.put("b" * 32, items[1:2], {"split": "val"})
    assert store.get("a" * 32) is not None  # used since "b" was written
    store.put("c" * 32, items[2:], {"split": "test"})
    assert [entry.key[0] for entry in store.entries()] == ["c", "a"]
    stored = store.get("c" * 32)
    assert torch.equal(stored[0]["features"], items[2]["features"])


def test_ragged_and_empty_states_round_trip(tmp_path):
    store = ActivationStore(tmp_path / "store", limit_bytes=2**30)
    items = [
        {"hidden": torch.randn(n, 4), "attention_mask": torch.ones(n, dtype=torch.long)}
        for n in (3, 1, 5)
    ] + [{"hidden": torch.zeros(0, 4), "attention_mask": torch.zeros(0, dtype=torch.long)}]
    store.put("d" * 32, items, {})
    stored = store.get("d" * 32)
    assert len(stored) == 4
    for item, back in zip(items, (stored[i] for i in range(4)), strict=True):
        for key in item:
            assert back[key].dtype == item[key].dtype and torch.equal(back[key], item[key])


def test_the_command_says_when_it_read_frozen_passes(
    tiny_bert_dir, tiny_csv, tmp_path, store, capsys
):
    args = ["train", "--data", str(tiny_csv), "--model", str(tiny_bert_dir), "--method", "transfer"]
    args += ["--output", str(tmp_path / "runs"), "report=false", "progress=false"]
    assert main(args) == 0
    assert "frozen passes" not in capsys.readouterr().out  # the first run computes them
    assert main(args) == 0
    assert "frozen passes: 3 read from the activation store, 0 computed" in capsys.readouterr().out


def test_cache_ls_and_clear(tiny_bert_dir, tiny_csv, tmp_path, store, capsys):
    _train(tiny_bert_dir, tiny_csv, tmp_path / "runs")
    assert main(["cache", "ls"]) == 0
    listed = capsys.readouterr().out
    assert "3 passes" in listed and str(store) in listed.replace("\n", "")
    assert main(["cache", "clear"]) == 0
    assert "freed" in capsys.readouterr().out
    assert list(store.iterdir()) == []
    again = _train(tiny_bert_dir, tiny_csv, tmp_path / "runs")
    assert again.summary["frozen_passes"] == {"reused": 0, "computed": 3}


def test_no_pass_is_kept_with_the_cache_off(tiny_bert_dir, tiny_csv, tmp_path, store):
    run = _train(tiny_bert_dir, tiny_csv, tmp_path / "runs", train={"cache": "off"})
    assert "frozen_passes" not in run.summary
    assert not store.exists() or list(store.iterdir()) == []


def test_evaluate_reads_the_test_pass_the_run_made(tiny_bert_dir, tmp_path, store):
    """`tsuika evaluate RUN --data test.csv` on the file the run scored: no frozen pass."""
    data, test = tmp_path / "data.csv", tmp_path / "test.csv"
    data.write_text(csv_text(sentiment_rows(40)), encoding="utf-8")
    test.write_text(csv_text(sentiment_rows(12, seed=5)), encoding="utf-8")
    run = _train(tiny_bert_dir, data, tmp_path / "runs", data={"test": str(test)})
    kept = sorted(entry.name for entry in store.iterdir())
    loaded = tsuika.load(run.path)
    metrics = loaded.evaluate(test)
    assert sorted(entry.name for entry in store.iterdir()) == kept  # read, not computed
    assert metrics["accuracy"] == run.summary["test"]["accuracy"]
    other = tmp_path / "other.csv"
    other.write_text(csv_text(sentiment_rows(10, seed=9)), encoding="utf-8")
    loaded.evaluate(other)
    assert len(list(store.iterdir())) == len(kept) + 1  # kept for the next evaluation


def test_plan_run_again_on_the_same_data_skips_every_frozen_pass(base_config, store):
    from tsuika.plan import plan

    config = {k: v for k, v in base_config.items() if k != "method"}
    first = plan(config, budget_seconds=None, budget_steps=40, final=False)
    again = plan(config, budget_seconds=None, budget_steps=40, final=False)
    assert first["frozen_passes"]["computed"] > 0
    assert again["frozen_passes"] == {"reused": first["frozen_passes"]["computed"], "computed": 0}
    assert [t["score"] for t in again["trials"]] == [t["score"] for t in first["trials"]]
