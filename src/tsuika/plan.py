"""`tsuika plan`: try adaptation strategies under a budget, keep the best on validation, train
it once as an ordinary run (tested once, with its report), and say why in a few sentences.

Candidates: transfer (a head on frozen features), the small-data recipe (`method: auto`),
fine-tuning at two freeze depths and two rates, LoRA at two ranks — those the model and task
allow. Optuna runs them one after another with successive halving (Jamieson & Talwalkar
2016, the asynchronous form of Li et al. 2018): each trial reports its validation score every
epoch, and one that is not among the best third of those that reached the same epoch stops
there. The cheap ones run first, so later trials have something to be compared with. The
default (the recipe) is never pruned, and is kept unless another strategy beats it on
validation beyond the 95 % interval of the difference: a few hundred validation examples
cannot tell strategies a few points apart, and a measured default is the better bet. Trials
share the frozen prefixes' activations (`CacheSettings.shared`): a boundary is computed once
for all trials that cache it. No trial sees the test split.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tsuika.api import adapting, as_config, task_and_data, train
from tsuika.config import Config, merge
from tsuika.console import say, warn
from tsuika.data.splits import Splits
from tsuika.errors import TsuikaError
from tsuika.feed.cache import CacheSettings, frozen_pass_settings, store_of
from tsuika.files import write_atomic
from tsuika.methods import METHODS, method_class
from tsuika.methods.recipe import choose
from tsuika.run_folder import check_run_dir
from tsuika.tasks import model_kind_for
from tsuika.tasks.base import Task
from tsuika.train.hooks import Hook
from tsuika.train.phase import run_trial, seed_everything
from tsuika.train.tracking import check_tracking

SEARCH_TRAINING = {"epochs": 10, "patience": 3}
"""Candidates that train by epochs (fine-tuning, LoRA): at most 10 epochs, stopping after 3
without a better validation score (the recipe keeps its fixed schedule)."""
FIRST_RUNG, REDUCTION = 2, 3
"""Successive halving's rungs: epochs 2, 6, 18; at each, a trial continues only if its
validation score is among the best third of the trials that reached that epoch."""


@dataclass
class Strategy:
    name: str
    settings: dict
    """Config overrides (sections as nested dicts), the method among them."""
    default: bool = False
    """What `tsuika train` does without a method (the recipe): never pruned, and kept unless
    another strategy beats it on validation by more than the interval."""


@dataclass
class Budget:
    seconds: float | None = None
    steps: int | None = None
    """Optimizer steps over all trials: a limit no trial goes past (whole epochs only)."""
    started: float = field(default_factory=time.perf_counter)
    spent_steps: int = 0

    def seconds_left(self) -> float:
        if self.seconds is None:
            return math.inf
        return self.seconds - (time.perf_counter() - self.started)

    def steps_left(self) -> int | None:
        return None if self.steps is None else self.steps - self.spent_steps

    def spent(self) -> bool:
        steps = self.steps_left()
        return self.seconds_left() <= 0 or (steps is not None and steps <= 0)


@dataclass
class Trial:
    strategy: str
    settings: dict
    state: str
    """`complete`, `pruned` (successive halving), `budget` (stopped when the budget ran out),
    `not run` (no budget left, or not one step fits) or `not applicable` (and why, in `why`)."""
    score: float | None = None
    """The best validation score it reached (the task's selection metric)."""
    best_epoch: int = 0
    epochs: int = 0
    steps: int = 0
    seconds: float = 0.0
    scores: list[float] = field(default_factory=list)
    """Validation score after each epoch."""
    overfit: str | None = None
    why: str | None = None


class Pruning(Hook):
    """Successive halving and the time budget, watching one trial's fit: each epoch's
    validation score is reported to Optuna, and the fit ends after an epoch that leaves the
    trial outside the best third at its rung (never the default's) or the budget spent.
    `stopped` says why, `scores` holds every epoch's score."""

    def __init__(self, trial, default: bool, budget: Budget, selection: str) -> None:
        self.trial, self.default, self.budget, self.selection = trial, default, budget, selection
        self.scores: list[float] = []
        self.stopped: str | None = None

    def epoch_ended(self, record: dict) -> bool:
        self.scores.append(record[self.selection])
        self.trial.report(record[self.selection], record["epoch"])
        if self.trial.should_prune() and not self.default:
            self.stopped = self.stopped or "pruned"
        elif self.budget.seconds_left() <= 0:
            self.stopped = self.stopped or "budget"
        return self.stopped is not None


def check_budget(seconds: float | None, steps: int | None) -> None:
    """A budget that allows some training: a zero or negative one would end the search
    before its first step and then ask for a larger budget."""
    if seconds is not None and not seconds > 0:
        raise TsuikaError(f"--budget {seconds:g} seconds: give a duration such as 10m, 90s or 1h")
    if steps is not None and steps < 1:
        raise TsuikaError(
            f"--max-steps {steps}: give at least 1 optimizer step (or leave --max-steps out)"
        )


def parse_budget(text: str) -> float:
    """`10m`, `90s`, `1h` or plain seconds → seconds."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not found or float(found.group(1)) <= 0:
        raise TsuikaError(f"--budget {text!r}: give a duration such as 10m, 90s or 1h")
    return float(found.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[found.group(2)]


def strategies(config: Config, task: Task, splits: Splits, groups: int) -> list[Strategy]:
    """The candidates, cheapest first. `groups`: the model's layer groups (embeddings, blocks,
    head), from which the freeze depths are counted."""
    offered = [
        Strategy(label, settings)
        for method in METHODS.values()
        if "plan_candidates" in vars(method) and method.fits(task)
        for label, settings in method.plan_candidates(groups, SEARCH_TRAINING)
    ]
    recipe = choose(config, task, splits, model_kind_for(config, task))
    chosen = {"method": recipe.method, **recipe.settings}
    same = [s for s in offered if s.settings == chosen]
    if same:  # for regression the recipe is transfer itself
        same[0].default = True
        return offered
    return [*offered[:1], Strategy(f"recipe ({recipe.method})", chosen, default=True), *offered[1:]]


def configured(base: Config, strategy: Strategy) -> Config:
    """The user's config with the strategy's settings: the strategy decides what it names."""
    merged = merge(base.model_dump(exclude_unset=True), strategy.settings)
    config = as_config(merged, {})
    return method_class(config.method).configured(config)


def overfitting(history: list[dict], selection: str) -> str | None:
    """Validation loss rising well past its best while the training loss falls: in words."""
    losses = [record["val_loss"] for record in history if "val_loss" in record]
    if len(losses) < 3:
        return None
    best = min(range(len(losses)), key=losses.__getitem__)
    if best < len(losses) - 1 and losses[-1] > losses[best] * 1.1:
        return (
            f"validation loss rose from {losses[best]:.3f} (epoch {best + 1}) to "
            f"{losses[-1]:.3f} (epoch {len(losses)})"
        )
    return None


def plan(
    config: Config | dict | str | Path | None = None,
    *,
    budget_seconds: float | None = 600.0,
    budget_steps: int | None = None,
    final: bool = True,
    storage: str | None = None,
    study: str = "tsuika-plan",
    **overrides,
) -> dict:
    """Search, then (with `final`) train the winner as an ordinary run. Returns the plan:
    `trials`, `best`, `explanation`, and `run` (the run folder) when trained.

    `storage`: an Optuna journal file on a shared file system (`plan.journal`) or database
    URL (`postgresql://…`) shared by several machines, each running the same plan with it:
    every candidate is tried once, by whichever machine takes it first, each machine within
    its own budget; the one with `final` waits for the others' trials and trains the winner
    (the others pass `final=False`, and return the trials they ran)."""
    import optuna

    base = as_config(config, overrides)
    if base.method != "auto":
        raise TsuikaError(
            f"plan chooses the method itself; drop method={base.method} (or run `tsuika train`)"
        )
    check_budget(budget_seconds, budget_steps)
    if final:  # what the run at the end would refuse, refused before the budget is spent
        check_tracking(base)
        check_run_dir(base.output, base.name)
    task, splits = task_and_data(base)
    if not task.plannable:
        raise TsuikaError(f"plan searches classifiers and regressors, not {task.name} runs")
    task.handle_imbalance(base.train.balance, splits.train)  # trials select as the run will
    groups = len(_built(base, "transfer", task).layer_groups())
    candidates = strategies(base, task, splits, groups)
    budget = Budget(budget_seconds, budget_steps)
    shared: dict[tuple, dict] = {}  # by how inputs are encoded: activations by boundary
    trials: list[Trial] = []
    maximize = task.higher_is_better

    spill = Path(tempfile.mkdtemp(prefix="tsuika-plan-"))  # caches above the memory limit
    store = store_of(base.train)  # one for every trial, so that its counts are the plan's
    stopped_by: list[BaseException] = []

    by_name = {s.name: s for s in candidates}

    def objective(trial: optuna.Trial) -> float:
        if storage is not None and trial.number not in queued:
            # Every candidate was taken, by this machine or another: nothing is left to try.
            trial.study.stop()
            raise optuna.TrialPruned("no candidate left")
        strategy = by_name[trial.suggest_categorical("strategy", list(by_name))]

        def cache_for(config: Config) -> CacheSettings:
            # Activations are shared only between trials that encode the inputs alike.
            inputs = (config.data.image_size, config.train.max_length)
            return replace(
                frozen_pass_settings(config.train),  # a run's: a pass has one address
                folder=spill / f"trial{trial.number}",
                shared=shared.setdefault(inputs, {}),
                store=store,
            )

        try:
            done = _attempt(strategy, base, task, splits, budget, cache_for, trial)
        except (KeyboardInterrupt, TsuikaError) as error:
            # Optuna would log it with its traceback ("Trial 2 failed …") before raising it
            # again; it ends the search here instead, and is raised once, after it.
            stopped_by.append(error)
            trial.study.stop()
            raise optuna.TrialPruned() from None
        trials.append(done)
        trial.set_user_attr(RECORD, asdict(done))  # for the machines that share the study
        if base.progress:
            score = "" if done.score is None else f", best validation {done.score:.3f}"
            say(f"plan: {done.strategy}: {done.state}{score} ({done.seconds:.1f} s)")
        if done.state != "complete":
            raise optuna.TrialPruned(done.state)
        return float(done.score)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = _study(storage, study, maximize, [s.name for s in candidates])
    queued = {t.number for t in search.get_trials(deepcopy=False) if RECORD_OF in t.system_attrs}
    try:
        search.optimize(objective, n_trials=len(candidates), catch=())
    finally:
        shared.clear()
        shutil.rmtree(spill, ignore_errors=True)
    if stopped_by:
        raise stopped_by[0]
    if storage is not None:
        if not final:  # a helper's part: the main machine chooses from every machine's trials
            return {"trials": [asdict(t) for t in trials], "storage": storage, "study": study}
        # The others have the same budget: what is left of it, and a minute, is enough.
        left = budget.seconds_left()
        trials = _shared_trials(search, wait=(left if math.isfinite(left) else 600) + 60)
    default = next(s.name for s in candidates if s.default)
    best = _best(trials, maximize, default, len(splits.val), task)
    if best is None:
        raise TsuikaError(
            "plan: no strategy trained a whole epoch within the budget; give a larger --budget"
        )
    result = {
        "budget": {"seconds": budget_seconds, "steps": budget_steps},
        "spent": {
            "seconds": time.perf_counter() - budget.started,
            "steps": budget.spent_steps,
        },
        "examples": {"train": len(splits.train), "validation": len(splits.val)},
        "selection": f"val_{task.selection}",
        # A plan run again on the same data reads every frozen pass the first one made.
        "frozen_passes": {"reused": store.hits, "computed": store.misses} if store else None,
        "trials": [asdict(t) for t in trials],
        "default": default,
        "best": best.strategy,
    }
    result["explanation"] = explain(result, task, maximize)
    if final:
        chosen = next(s for s in candidates if s.name == best.strategy)
        run = train(configured(base, chosen))
        result["run"] = str(run.path)
        result["test"] = run.summary.get("test", {})
        _record_in_run(run.path, result, run.summary, base.report)
    return result


RECORD = "tsuika_trial"
"""A finished trial's `Trial` record, kept in the study (user attribute) for every machine."""
RECORD_OF = "fixed_params"
"""Optuna's system attribute of a trial enqueued with fixed parameters: one of the candidates."""


def _study(storage: str | None, name: str, maximize: bool, names: list[str]):
    """The search's Optuna study: in memory, or in `storage` shared by several machines —
    made by the first with every candidate queued once, loaded by the others."""
    import optuna

    settings = dict(
        direction="maximize" if maximize else "minimize",
        pruner=optuna.pruners.SuccessiveHalvingPruner(
            min_resource=FIRST_RUNG, reduction_factor=REDUCTION
        ),
    )
    if storage is None:
        study = optuna.create_study(**settings)
    else:
        database = _database(storage)
        try:
            study = optuna.create_study(storage=database, study_name=name, **settings)
        except optuna.exceptions.DuplicatedStudyError:
            return _joined(optuna.load_study(study_name=name, storage=database), names)
    for strategy in names:
        study.enqueue_trial({"strategy": strategy})
    study.set_user_attr("strategies", names)  # last: the candidates are all queued
    return study


def _database(url: str, attempts: int = 5):
    """Optuna's storage at `url`: a database server (`postgresql://…`, `mysql://…`,
    `sqlite:///…`), or a file path for Optuna's journal, which locks the file for every
    change: safe for processes on one machine or on a shared file system. (SQLite is not:
    two processes can both take the same queued trial.) Machines starting together on a new
    database race to make its tables (all but one fail on a unique constraint): each tries
    again, and finds them."""
    import optuna

    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        try:
            return optuna.storages.JournalStorage(JournalFileBackend(url))
        except OSError as error:
            raise TsuikaError(f"--storage {url}: {error.strerror}") from None
    # SQLite: wait for another machine's write instead of failing at once on a locked file.
    options = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=options)
        except Exception as error:  # a bad URL, a missing driver, or the race above
            if attempt + 1 < attempts and "UNIQUE constraint" in str(error):
                time.sleep(0.5 * (attempt + 1))
                continue
            reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
            raise TsuikaError(
                f"--storage {url}: {reason or type(error).__name__}; give a journal file "
                "(plan.journal) or an Optuna database URL such as postgresql://host/plans"
            ) from None
    raise AssertionError("unreachable")


def _joined(study, names: list[str], wait: float = 60.0):
    """A study another machine made, once its candidates are queued; refused if it searches
    other candidates (another model, task or data)."""
    deadline = time.time() + wait
    while "strategies" not in study.user_attrs and time.time() < deadline:
        time.sleep(0.5)
    theirs = study.user_attrs.get("strategies")
    if theirs != names:
        raise TsuikaError(
            f"study `{study.study_name}` searches {theirs or 'nothing yet'}, this plan "
            f"{names}: give every machine the same data, model and settings, or another --study"
        )
    return study


def _shared_trials(study, wait: float, poll: float = 1.0) -> list[Trial]:
    """Every candidate's record, once no machine runs one any more, or after `wait` seconds
    (a machine that died mid-trial leaves it running for ever): those still running are
    said and left out."""
    from optuna.trial import TrialState

    deadline = time.time() + wait
    while running := study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if time.time() > deadline:
            names = ", ".join(str(t.params.get("strategy")) for t in running)
            warn(f"plan: still running on another machine after {wait:.0f} s, left out: {names}")
            break
        time.sleep(poll)
    done = study.get_trials(deepcopy=False)
    return [Trial(**t.user_attrs[RECORD]) for t in done if RECORD in t.user_attrs]


def _built(config: Config, method_name: str, task: Task):
    """The model `config` names with the task's head, as `method_name` builds it."""
    method = method_class(method_name)(config.model_copy(update={"method": method_name}), task)
    return method.build_model(config)


def _attempt(
    strategy: Strategy,
    base: Config,
    task: Task,
    splits: Splits,
    budget: Budget,
    cache_for: Callable[[Config], CacheSettings],
    trial,
) -> Trial:
    """One candidate, trained on the training split and scored on validation each epoch."""
    done = Trial(strategy.name, strategy.settings, "not run")
    if budget.spent():
        done.why = "the budget was spent before it started"
        return done
    try:
        config = configured(base, strategy)
        seed_everything(config.seed)
        method, model = adapting(config, task)
    except TsuikaError as error:
        done.state, done.why = "not applicable", str(error)
        return done
    pruning = Pruning(trial, strategy.default, budget, f"val_{task.selection}")
    started = time.perf_counter()
    cache = cache_for(config)
    result = run_trial(model, method, splits, config, cache, budget.steps_left(), [pruning])
    done.scores = pruning.scores
    budget.spent_steps += result.steps
    done.seconds = time.perf_counter() - started
    done.steps, done.epochs = result.steps, len(result.history)
    if not result.history:
        done.why = "not one epoch fitted in the steps left"
        return done
    done.score, done.best_epoch = result.best_score, result.best_epoch
    done.overfit = overfitting(result.history, task.selection)
    if pruning.stopped:
        done.state = pruning.stopped
    elif result.stopped_by == "max_steps":
        done.state = "budget"
    else:
        done.state = "complete"
    if done.state == "pruned":
        done.why = f"after epoch {done.epochs}, not among the best third at that epoch"
    elif done.state == "budget":
        done.why = f"the budget ran out after epoch {done.epochs}"
    return done


def _best(trials: list[Trial], maximize: bool, default: str, n: int, task: Task) -> Trial | None:
    """The default strategy, unless a completed one beats it on validation beyond the 95 %
    interval (with a hundred validation examples, ±0.12 in accuracy: a lead inside it is as
    likely noise as skill, and the default's choice was measured across seeds and data sizes).
    Without a completed default (or an interval: regression), the best completed trial; when
    none completed, the best one cut short."""
    sign = 1 if maximize else -1
    done = [t for t in trials if t.state == "complete" and t.score is not None]
    kept = next((t for t in done if t.strategy == default), None)
    if done:
        leader = max(done, key=lambda t: sign * t.score)
        if kept is None or not proportion(task, kept.score):
            return leader
        margin = sign * (leader.score - kept.score)
        return leader if margin > unpaired(leader.score, kept.score, n) else kept
    cut = [t for t in trials if t.state in ("budget", "pruned") and t.score is not None]
    return max(cut, key=lambda t: sign * t.score) if cut else None


def proportion(task: Task, score: float) -> bool:
    """Whether the selection metric is a share of examples (an interval can be had)."""
    return task.selection_is_share and 0 <= score <= 1


def unpaired(a: float, b: float, n: int) -> float:
    """Half-width of a 95 % interval for the difference of two accuracies on the same `n`
    examples, taken as unpaired (the per-example outcomes are not kept): wider than paired."""
    return math.hypot(interval(a, n), interval(b, n))


def interval(score: float, n: int) -> float:
    """Half-width of a 95 % interval for an accuracy on `n` examples (Agresti–Coull: two
    successes and two failures added, so a perfect score on a few examples is not certain)."""
    shrunk = (score * n + 2) / (n + 4)
    return 1.96 * math.sqrt(shrunk * (1 - shrunk) / (n + 4))


def explain(result: dict, task: Task, maximize: bool) -> str:
    """A few sentences: the data size, the choice and its margin, overfitting, what was
    pruned and why."""
    trials = [t for t in result["trials"] if t["score"] is not None]
    best = next(t for t in trials if t["strategy"] == result["best"])
    n = result["examples"]["validation"]
    metric = result["selection"].removeprefix("val_")
    sentences = [
        f"{result['examples']['train']} training and {n} validation examples; "
        f"{len(result['trials'])} strategies considered in {result['spent']['seconds']:.0f} s "
        f"and {result['spent']['steps']} optimizer steps."
    ]
    chosen = f"Chose {best['strategy']}: validation {metric} {best['score']:.3f}"
    others = [t for t in trials if t is not best and t["state"] == "complete"]
    if others:
        sign = 1 if maximize else -1
        runner = max(others, key=lambda t: sign * t["score"])
        gap = best["score"] - runner["score"]
        chosen += f", {gap:+.3f} against the best other completed ({runner['strategy']}"
        if proportion(task, best["score"]):
            half = unpaired(best["score"], runner["score"], n)
            chosen += f"; 95 % interval ±{half:.3f} on {n} examples)"
            if best["strategy"] == result["default"] and sign * gap < 0:
                chosen += ": the default is kept unless beaten beyond the interval"
            elif abs(gap) <= half:
                chosen += ", so the two are not told apart"
        else:
            chosen += ")"
        if gap == 0 and best["strategy"] != result["default"]:
            chosen += "; a tie goes to the strategy tried first, the cheaper"
    sentences.append(chosen + ".")
    overfit = [f"{t['strategy']} ({t['overfit']})" for t in result["trials"] if t["overfit"]]
    if overfit:
        sentences.append("Overfitting seen: " + "; ".join(overfit) + ".")
    for state, words in (
        ("pruned", "Pruned by successive halving"),
        ("budget", "Cut short by the budget"),
        ("not run", "Not run"),
        ("not applicable", "Not applicable"),
    ):
        named = [f"{t['strategy']} ({t['why']})" for t in result["trials"] if t["state"] == state]
        if named:
            sentences.append(f"{words}: " + "; ".join(named) + ".")
    return " ".join(sentences)


def _record_in_run(path: Path, result: dict, summary: dict, report: bool) -> None:
    """The plan goes into the run's folder (plan.json, and the summary the report reads)."""
    plan_part = {key: value for key, value in result.items() if key not in ("run", "test")}
    write_atomic(path / "plan.json", json.dumps(plan_part, indent=2))
    summary["plan"] = {key: result[key] for key in ("best", "explanation", "trials")}
    write_atomic(path / "summary.json", json.dumps(summary, indent=2))
    if report:
        from tsuika.report import write_report

        write_report(path)
