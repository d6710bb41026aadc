"""Forgetting: what the model could do before, measured every epoch next to the target metric.

`data.retain` names examples of it. For an encoder (classifiers, regressors), a labelled set of
another task: a linear probe, cross-validated on the model's current pooled features, scores
how well the features still serve it (accuracy). For a causal language model, prompts with
completions of general use: the loss per completion token. The pretrained model is measured
once before training; every epoch adds `retain_<metric>` to the record (so to metrics.jsonl
and the report's curve); after training, the kept model is measured again and compared with
the pretrained one example by example (paired bootstrap). FORGETTING when the whole 95 %
interval of the change is on the worse side. `Forgetting` does this as a hook of the
adaptation's fit, and adds the verdict to the summary.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from tsuika.advice.rank import classification_probe, probe_shortfall
from tsuika.config import Config
from tsuika.console import warn
from tsuika.data.reading import read_examples
from tsuika.errors import TsuikaError
from tsuika.feed import Feed, gather_outputs, input_feed
from tsuika.feed.cache import CacheSettings
from tsuika.methods.base import Method
from tsuika.models.base import AdaptableModel
from tsuika.tasks.base import Task
from tsuika.train.distributed import is_main_process
from tsuika.train.hooks import Hook
from tsuika.train.loop import FitResult

RETAIN_LIMIT = 1000
"""At most this many retain examples (drawn once, by the run's seed): each epoch measures them."""
BOOTSTRAP = 1000


@dataclass
class Retention:
    """The retain set and every measurement of it during one run."""

    kind: str
    """`probe` (accuracy, higher is better) or `loss` (per completion token, lower is better)."""
    feed: Feed
    source: str
    labels: np.ndarray | None = None
    """The probe's classes, per example."""
    losses: Callable[[AdaptableModel], np.ndarray] | None = None
    """A causal LM's loss per completion token, per example."""
    seed: int = 0
    pretrained: np.ndarray | None = None
    """Per example: probe correctness (0/1) or loss, of the pretrained model."""

    @property
    def metric(self) -> str:
        return "accuracy" if self.kind == "probe" else "loss"

    def outcomes(self, model: AdaptableModel) -> np.ndarray:
        """Per-example outcomes of `model` as it is now."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if self.losses is not None:
                    return self.losses(model)
                stop = model.num_stages - 1
                features = gather_outputs(model, self.feed, batch_size=64, stop=stop)["features"]
                return probe_outcomes(features.float().numpy(), self.labels, self.seed)
        finally:
            model.train(was_training)

    def start(self, model: AdaptableModel) -> None:
        self.pretrained = self.outcomes(model)

    def verdict(self, model: AdaptableModel, history: list[dict]) -> dict:
        """The kept model against the pretrained one, example by example; `history`: the
        fit's epochs (with those before a resume), whose retain scores make the curve."""
        assert self.pretrained is not None
        kept = self.outcomes(model)
        change = kept - self.pretrained
        rng = np.random.default_rng(self.seed)
        draws = rng.integers(0, len(change), size=(BOOTSTRAP, len(change)))
        low, high = np.percentile(change[draws].mean(axis=1), [2.5, 97.5])
        worse = high < 0 if self.kind == "probe" else low > 0
        return {
            "data": self.source,
            "examples": len(change),
            "metric": self.metric,
            "higher_is_better": self.kind == "probe",
            "pretrained": float(self.pretrained.mean()),
            "kept": float(kept.mean()),
            "change": float(change.mean()),
            "interval": [float(low), float(high)],
            "verdict": "FORGETTING" if worse else "retained",
            "curve": [
                {"epoch": r["epoch"], "score": r[f"retain_{self.metric}"]}
                for r in history
                if f"retain_{self.metric}" in r
            ],
        }


class Forgetting(Hook):
    """The forgetting monitor, watching the adaptation of `model`: every epoch adds
    `retain_<metric>` to the record; the kept model is judged at the end, and the summary
    gets `forgetting` and its verdict in words, with the remedies the method allows."""

    def __init__(
        self, retained: Retention, model: AdaptableModel, remedies: frozenset[str]
    ) -> None:
        self.retained, self.model, self.remedies = retained, model, remedies
        self.found: dict | None = None

    def epoch_ended(self, record: dict) -> bool:
        metric = self.retained.metric
        record[f"retain_{metric}"] = float(self.retained.outcomes(self.model).mean())
        return False

    def fit_ended(self, result: FitResult) -> None:
        self.found = self.retained.verdict(self.model, result.history)

    def summary(self, summary: dict) -> dict:
        if self.found is None:
            return {}
        sentence = forgetting_sentence(self.found, self.remedies)
        if self.found["verdict"] == "FORGETTING" and is_main_process():
            warn(sentence)
        return {"forgetting": self.found, "verdicts": {"forgetting": {"text": sentence}}}


def forgetting_sentence(found: dict, remedies: frozenset[str]) -> str:
    """The forgetting verdict in words, with the remedy the method allows."""
    low, high = found["interval"]
    sentence = (
        f"{found['verdict']}: retain {found['metric']} {found['pretrained']:.3f} before "
        f"training, {found['kept']:.3f} after ({found['change']:+.3f}, 95 % interval "
        f"{low:+.3f} to {high:+.3f}, {found['examples']} examples of {found['data']})"
    )
    if found["verdict"] != "FORGETTING":
        return sentence
    if remedies:
        named = " or ".join(f"finetune.{k}" for k in sorted(remedies))
        return sentence + f"; {named} keep more of it"
    return sentence + "; a lower learning rate or fewer epochs keep more of it"


def probe_outcomes(features: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """Out-of-fold correctness (0/1) of `tsuika rank`'s linear probe, per example."""
    from sklearn.model_selection import cross_val_predict

    probe, split = classification_probe(labels, seed)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        predicted = cross_val_predict(probe, features, labels, cv=split)
    return (predicted == labels).astype(np.float64)


def sampled(n: int, seed: int) -> list[int]:
    """All n rows, or `RETAIN_LIMIT` of them drawn once by the run's seed, in file order."""
    if n <= RETAIN_LIMIT:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, RETAIN_LIMIT, replace=False).tolist())


def retention(
    config: Config, task: Task, method: Method, model: AdaptableModel
) -> Retention | None:
    """The run's retain set read and the pretrained model measured on it (None without
    `data.retain`). A bad file fails here, before any run folder is written."""
    path = config.data.retain
    if path is None:
        return None
    settings = config.data.model_copy(update={"strict": True})
    problems: list[str] = []
    if task.forgetting is None:
        raise TsuikaError(f"data.retain: forgetting is not measured for {task.name} runs")
    if task.forgetting == "loss":
        raw = read_examples(model.model_kind, path, "train", settings, [], problems)
        examples = task.encode(raw.subset(sampled(len(raw), config.seed)))
        feed = input_feed(
            model, examples.inputs, task.targets(examples), None, task.units(examples)
        )

        def losses(current: AdaptableModel) -> np.ndarray:
            return task.losses(task.gather(current, feed), feed.targets).double().numpy()

        found = Retention("loss", feed, path, losses=losses, seed=config.seed)
    else:
        column = config.data.retain_label_column
        key = "data.retain_label_column"
        raw = read_examples(model.model_kind, path, "train", settings, [column], problems, key)
        if problems:
            raise TsuikaError(f"data.retain: {problems[0]}")
        labels = np.array(raw.targets[column])
        if len(set(labels.tolist())) < 2:
            raise TsuikaError(
                f"data.retain {path}: column {column!r} needs at least two classes "
                "(data.retain_label_column names it)"
            )
        rows = sampled(len(labels), config.seed)
        shortfall = probe_shortfall(labels[rows], classification=True)
        if shortfall:
            raise TsuikaError(
                f"data.retain {path}: {shortfall}; add examples of that class or remove it"
            )
        inputs = [raw.inputs[i] for i in rows]
        feed = method.precompute(
            model, input_feed(model, inputs), CacheSettings(mode=config.train.cache), "retain"
        )
        found = Retention("probe", feed, path, labels=labels[rows], seed=config.seed)
    with method.unadapted(model):
        found.start(model)
    return found
