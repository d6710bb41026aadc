"""`tsuika plan`: the step budget, the best trial, successive halving's wiring, the run it
writes; and the limit it adds to the one loop (`max_steps`; a hook that ends a fit, as its
pruning does, is tested in tests/test_run_hooks.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tsuika
from tsuika.errors import TsuikaError
from tsuika.feed.cache import CacheSettings
from tsuika.plan import Budget, Strategy, _attempt, parse_budget, plan


def test_fit_stops_before_an_epoch_that_would_pass_max_steps(base_config, monkeypatch):
    from tsuika.train import phase

    seen: list[tuple] = []
    original = phase.fit

    def limited(*args, **kwargs):
        result = original(*args, **{**kwargs, "max_steps": 9})
        seen.append((result.steps, len(result.history), result.stopped_by))
        return result

    monkeypatch.setattr(phase, "fit", limited)
    tsuika.train(base_config, name="limited")
    # 40 rows → 32 training rows at batch 8: 4 steps an epoch; a third epoch would end at 12.
    assert seen == [(8, 2, "max_steps")]


@pytest.mark.parametrize("text,seconds", [("10m", 600), ("90s", 90), ("1h", 3600), ("45", 45)])
def test_budget_durations(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "0m", "-5s"])
def test_a_bad_budget_is_refused(text):
    with pytest.raises(TsuikaError, match="--budget"):
        parse_budget(text)


def test_plan_spends_at_most_its_steps_and_keeps_the_default_unless_beaten(base_config):
    config = {k: v for k, v in base_config.items() if k != "method"}
    result = plan(config, budget_seconds=None, budget_steps=60, final=False)
    trials = result["trials"]
    assert sum(t["steps"] for t in trials) == result["spent"]["steps"] <= 60
    assert trials[0]["strategy"] == "transfer" and trials[0]["state"] == "complete"
    # the default (the recipe) is kept unless a completed trial beats it beyond the interval
    from tsuika.plan import unpaired

    assert result["default"] == "recipe (contrastive)"
    completed = {t["strategy"]: t["score"] for t in trials if t["state"] == "complete"}
    default = completed[result["default"]]
    n = result["examples"]["validation"]
    beaten = [s for s, v in completed.items() if v - default > unpaired(v, default, n)]
    assert result["best"] == (max(beaten, key=completed.get) if beaten else result["default"])
    # The budget ran out: the last trials did not run, and the explanation says so.
    assert any(t["state"] in ("not run", "budget") for t in trials)
    assert "Not run" in result["explanation"] or "budget" in result["explanation"]
    assert "test" not in result and "run" not in result


def test_successive_halving_stops_a_trial_at_the_epoch_it_is_pruned(base_config):
    """The pruner's answer ends the trial after that epoch; what was reported reaches Optuna."""

    class PrunedAtTwo:
        def __init__(self):
            self.reported: list[tuple[float, int]] = []

        def report(self, value: float, step: int) -> None:
            self.reported.append((value, step))

        def should_prune(self) -> bool:
            return len(self.reported) == 2

    from tsuika.api import as_config, task_and_data

    config = as_config({k: v for k, v in base_config.items() if k != "method"}, {})
    task, splits = task_and_data(config)
    trial = PrunedAtTwo()
    done = _attempt(
        Strategy("transfer", {"method": "transfer"}),
        config,
        task,
        splits,
        Budget(),
        lambda config: CacheSettings(shared={}),
        trial,
    )
    assert done.state == "pruned" and done.epochs == 2 and len(trial.reported) == 2
    assert [step for _, step in trial.reported] == [1, 2]
    # the default strategy is never pruned: it runs its whole schedule (5 epochs here)
    kept = _attempt(
        Strategy("transfer", {"method": "transfer"}, default=True),
        config,
        task,
        splits,
        Budget(),
        lambda config: CacheSettings(shared={}),
        PrunedAtTwo(),
    )
    assert kept.state == "complete" and kept.epochs == 5


def test_the_default_is_kept_unless_beaten_beyond_the_interval(base_config):
    from tsuika.api import as_config, task_and_data
    from tsuika.plan import Trial, _best, unpaired

    task, _ = task_and_data(as_config({k: v for k, v in base_config.items() if k != "method"}, {}))
    half = unpaired(0.80, 0.70, 100)  # ±0.12 on 100 examples
    assert 0.11 < half < 0.13

    def trials(default_score, other_score, default_state="complete"):
        return [
            Trial("transfer", {}, "complete", score=other_score),
            Trial("recipe", {}, default_state, score=default_score),
        ]

    assert _best(trials(0.70, 0.80), True, "recipe", 100, task).strategy == "recipe"
    assert _best(trials(0.70, 0.85), True, "recipe", 100, task).strategy == "transfer"
    assert _best(trials(0.70, 0.80), True, "recipe", 1000, task).strategy == "transfer"
    assert _best(trials(0.70, 0.80, "budget"), True, "recipe", 100, task).strategy == "transfer"


def test_trials_share_the_frozen_prefix_cache(base_config, monkeypatch):
    import tsuika.methods.base as base

    computed: list[str] = []
    original = base.cache_boundary

    def counting(model, feed, boundary, settings, name):
        computed.append(name)
        return original(model, feed, boundary, settings, name)

    monkeypatch.setattr(base, "cache_boundary", counting)
    from tsuika.api import as_config, task_and_data

    config = as_config({k: v for k, v in base_config.items() if k != "method"}, {})
    task, splits = task_and_data(config)
    cache = CacheSettings(shared={})

    class Never:
        def report(self, value, step):
            pass

        def should_prune(self):
            return False

    for _ in range(2):
        _attempt(
            Strategy("transfer", {"method": "transfer"}),
            config,
            task,
            splits,
            Budget(),
            lambda config: cache,
            Never(),
        )
    assert computed == ["train", "val"]  # once for both trials; never the test split


def test_plan_trains_the_winner_once_as_a_run_with_the_plan_in_it(
    tiny_bert_dir: Path, tiny_csv: Path, tmp_path: Path, capsys
):
    from tsuika.cli import main

    args = ["plan", "--data", str(tiny_csv), "--model", str(tiny_bert_dir), "--max-steps", "40"]
    args += [f"output={tmp_path / 'runs'}", "train.batch_size=8", "--json"]
    assert main(args) == 0
    shown = json.loads(capsys.readouterr().out)
    folder = Path(shown["run"])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["plan"]["best"] == shown["best"]
    assert json.loads((folder / "plan.json").read_text())["best"] == shown["best"]
    assert "accuracy" in shown["test"]
    page = (folder / "report.html").read_text()
    assert 'id="plan"' in page and "Why this strategy" in page
    assert [p for p in (tmp_path / "runs").iterdir() if p.is_dir()] == [folder]


def test_plan_refuses_a_named_method(base_config):
    with pytest.raises(TsuikaError, match="plan chooses the method"):
        plan(base_config, budget_steps=10, final=False)


def candidates_for(config: dict, groups: int = 8) -> list:
    from tsuika.api import as_config, task_and_data
    from tsuika.plan import strategies

    config = as_config({k: v for k, v in config.items() if k != "method"}, {})
    task, splits = task_and_data(config)
    return strategies(config, task, splits, groups)


def test_the_candidates_are_distinct_and_cheapest_first(base_config):
    # 8 groups (MiniLM-L6: embeddings, 6 blocks, head): the upper half is freeze 3
    found = candidates_for(base_config)
    names = [s.name for s in found]
    assert names[:2] == ["transfer", "recipe (contrastive)"] and len(set(names)) == 8
    assert [s.settings["method"] for s in found[2:]] == ["finetune"] * 4 + ["lora"] * 2
    assert [s.settings["finetune"]["freeze"] for s in found[2:6]] == [3, 3, 1, 1]
    # the tiny BERT's 4 groups: "upper half" would be "all above the embeddings" again
    small = candidates_for(base_config, groups=4)
    freezes = [
        s.settings["finetune"]["freeze"] for s in small if s.settings["method"] == "finetune"
    ]
    assert freezes == [1, 1]


def test_a_regressor_is_not_offered_transfer_twice(base_config, write_file):
    rows = "text,score\n" + "".join(f"good movie {i},{i / 10}\n" for i in range(30))
    data = {"train": str(write_file("scores.csv", rows)), "label_column": "score"}
    found = candidates_for({**base_config, "task": "regression", "data": data})
    assert [s.name for s in found].count("transfer") == 1
    assert not any(s.name.startswith("recipe") for s in found)


def test_the_candidates_come_from_the_methods_that_declare_them(base_config, monkeypatch):
    """A method offers `plan` its own candidates (a plugin's too); a subclass that does not
    declare any offers none (contrastive extends finetune, and is not one of its schedules)."""
    import tsuika.plan
    from tsuika.methods import METHODS, Finetune

    class Wide(Finetune):
        name = "wide"

        @classmethod
        def plan_candidates(cls, groups: int, search: dict) -> list[tuple[str, dict]]:
            return [("wide everything", {"method": cls.name, "train": search})]

    class Narrow(Finetune):  # declares nothing: inherits no candidates
        name = "narrow"

    methods = {**METHODS, "wide": Wide, "narrow": Narrow}
    monkeypatch.setattr(tsuika.plan, "METHODS", methods)
    names = [s.name for s in candidates_for(base_config)]
    assert names[-1] == "wide everything" and names.count("wide everything") == 1
    assert not any("narrow" in name or "contrastive" in name for name in names[2:])


def test_machines_sharing_a_storage_try_every_candidate_once(
    tiny_bert_dir: Path, tiny_csv: Path, tmp_path: Path
):
    """Two `tsuika plan` processes on one Optuna journal, as two machines would be: every
    candidate is tried once, by one or the other; the main one reports them all and trains
    the winner, the search-only one trains nothing."""
    import os
    import subprocess
    import sys

    import optuna

    storage = str(tmp_path / "plan.journal")
    args = [
        *(sys.executable, "-m", "tsuika.cli", "plan", "--data", str(tiny_csv)),
        *("--model", str(tiny_bert_dir), "--max-steps", "40", "--storage", storage),
        *(f"output={tmp_path / 'runs'}", "train.batch_size=8", "--json"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    helper = subprocess.Popen(
        [*args, "--search-only"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    main = subprocess.run(args, env=env, capture_output=True, timeout=600)
    assert main.returncode == 0, main.stderr.decode()
    assert helper.wait(timeout=600) == 0, helper.stderr.read().decode()
    shown = json.loads(main.stdout)
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
    study = optuna.load_study(study_name="tsuika-plan", storage=journal)
    names = study.user_attrs["strategies"]
    assert [t["strategy"] for t in shown["trials"]] == names  # every one, once, in order
    tried = [t.params["strategy"] for t in study.trials if "tsuika_trial" in t.user_attrs]
    assert sorted(tried) == sorted(names)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [Path(shown["run"]).name]
    helper_shown = json.loads(helper.stdout.read())
    assert "run" not in helper_shown


def test_a_study_of_other_candidates_is_refused(base_config, tmp_path):
    storage = f"sqlite:///{tmp_path / 'plan.db'}"
    import optuna

    study = optuna.create_study(storage=storage, study_name="tsuika-plan")
    study.set_user_attr("strategies", ["something else"])
    with pytest.raises(TsuikaError, match="give every machine the same data"):
        config = {k: v for k, v in base_config.items() if k != "method"}
        plan(config, budget_steps=10, final=False, storage=storage)
