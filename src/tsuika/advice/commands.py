"""`tsuika check` and `tsuika rank`: advice measured on the user's data and models, in plain
words with the fix.

The commands read data and build models through `tsuika.api`, which itself uses the checks of
this package: `advice/__init__.py` must not import this module (it would close the loop and load
the whole toolkit with the checks)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from tsuika.advice.checks import (
    Finding,
    class_names,
    data_checks,
    domain_shift,
    label_columns,
    label_errors,
    near_duplicates,
    with_label_names,
)
from tsuika.advice.features import pooled_features
from tsuika.advice.rank import logme, probe_score, probe_shortfall
from tsuika.api import as_config, read_data, task_and_data
from tsuika.config import Config, path_given
from tsuika.errors import TsuikaError
from tsuika.feed.cache import frozen_pass_settings
from tsuika.model_kinds import kinds_in_words
from tsuika.models import model_for
from tsuika.tasks import model_kind_for, task_for
from tsuika.train.phase import seed_everything

SPLITS = ("train", "val", "test")
GENERATIVE = ("causal-lm", "text-to-image")
"""Tasks whose inputs are prompts: the checks on pooled features of an encoder do not apply
(the data-only checks do)."""


def check(
    config: Config | dict | str | Path | None = None,
    source: str | None = None,
    features: bool = True,
    **overrides: Any,
) -> list[Finding]:
    """Every data check on the splits a `train` with this config would see; `source`: data
    the model was trained on before (or another domain) to measure the shift from; without
    `features`, only the checks that read the data alone."""
    config = as_config(config, overrides)
    task, splits = task_and_data(config)
    source_inputs = read_source(config, source) if source is not None else None
    findings = data_checks(splits, task)
    if not features or task.name in GENERATIVE:
        return findings
    model = model_for(config, lambda width: nn.Identity()).eval()
    settings = frozen_pass_settings(config.train)
    pooled = {s: pooled_features(model, getattr(splits, s).inputs, settings, s) for s in SPLITS}
    found = near_duplicates(splits, pooled)
    columns = label_columns(task)
    if columns:
        found.append(label_errors(splits.train, pooled["train"], columns[0], config.seed))
    if source_inputs is not None:
        source_pooled = pooled_features(model, source_inputs, settings, "source")
        found.append(domain_shift(source_pooled, pooled["train"], config.seed))
    return findings + with_label_names(found, task)


def read_source(config: Config, source: str) -> list:
    """Every input of a source dataset (read before any model runs, so a bad file fails
    at once), with the target's columns and settings."""
    try:  # an empty one would fall back to the bundled data: a shift measured from nothing
        path_given(source)
    except ValueError as error:
        raise TsuikaError(f"source {error}") from None
    data = config.data.model_copy(update={"train": source, "validation": None, "test": None})
    source_config = config.model_copy(update={"data": data})
    splits = read_data(source_config, model_kind_for(source_config), task_for(source_config))
    return splits.train.inputs + splits.val.inputs + splits.test.inputs


RANDOM_PREFIX = "random:"
"""`random:NAME`: NAME's architecture with fresh random weights — the floor a pretrained
candidate has to beat to be worth its download."""


def rank(
    config: Config | dict | str | Path | None = None,
    models: list[str] | None = None,
    limit: int | None = 2000,
    **overrides: Any,
) -> list[dict]:
    """Candidates ordered by LogME on their frozen features of the training split (at most
    `limit` examples, drawn evenly across classes), each with a cross-validated probe's score
    and the seconds each part took. No candidate is fine-tuned."""
    if limit is not None and limit < 1:
        raise TsuikaError(f"--limit {limit}: give how many training examples to score (≥ 1)")
    config = as_config(config, overrides)
    names = models or [config.model]
    first = names[0].removeprefix(RANDOM_PREFIX)
    task, splits = task_and_data(config.model_copy(update={"model": first}))
    classification = bool(label_columns(task))
    if not task.rankable:
        raise TsuikaError(f"tsuika rank scores classification or regression, not {task.name}")
    column = task.columns[0]
    rows = sampled_rows(splits.train.targets[column], limit, config.seed, classification)
    inputs = [splits.train.inputs[i] for i in rows]
    labels = np.asarray([splits.train.targets[column][i] for i in rows])
    named = class_names(task).get(column)
    shown = np.asarray([named[i] for i in labels]) if named and classification else labels
    shortfall = probe_shortfall(shown, classification)
    if shortfall:  # before any model is loaded
        fewer = len(rows) < len(splits.train)
        fix = "raise --limit" if fewer else "give more training examples"
        if not fewer and config.data.k is not None:
            fix += " or a larger data.k"
        raise TsuikaError(f"tsuika rank: {shortfall} ({len(rows)} training examples scored); {fix}")
    kind = model_kind_for(config.model_copy(update={"model": first}), task)
    results = []
    for name in names:
        plain = name.removeprefix(RANDOM_PREFIX)
        candidate = config.model_copy(update={"model": plain})
        other = model_kind_for(candidate, task)
        if other != kind:
            raise TsuikaError(
                f"{name} is {kinds_in_words({other}, article=True)} and {names[0]} "
                f"{kinds_in_words({kind}, article=True)}: rank models of one kind"
            )
        started = time.perf_counter()
        seed_everything(config.seed)  # a random twin's weights: the same for every rank
        model = model_for(candidate, lambda width: nn.Identity(), plain == name, kind)
        features = pooled_features(model.eval(), inputs, frozen_pass_settings(config.train), "rank")
        timings = {"features": time.perf_counter() - started}
        started = time.perf_counter()
        evidence = logme(features, labels, classification)
        timings["logme"] = time.perf_counter() - started
        started = time.perf_counter()
        probe = probe_score(features, labels, classification, config.seed)
        timings["probe"] = time.perf_counter() - started
        results.append(
            {
                "model": name,
                "logme": evidence,
                "probe": probe,
                "probe_metric": "accuracy" if classification else "r2",
                "examples": len(rows),
                "seconds": timings,
            }
        )
    return sorted(results, key=lambda r: -r["logme"])


def sampled_rows(labels: list, limit: int | None, seed: int, by_class: bool) -> list[int]:
    """Up to `limit` row indices, the same share of every class (seeded)."""
    rows = list(range(len(labels)))
    if limit is None or len(rows) <= limit:
        return rows
    rng = random.Random(seed)
    if not by_class:
        return sorted(rng.sample(rows, limit))
    groups: dict = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(index)
    share = limit / len(rows)
    chosen = [i for g in groups.values() for i in rng.sample(g, max(1, round(share * len(g))))]
    return sorted(chosen)
