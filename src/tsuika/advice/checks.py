"""`tsuika check`: is the data sound before anything trains on it?

Each check returns a `Finding`: what was counted, a verdict, the rows that show it, and the
fix in one sentence. The cheap ones (class balance, empty and extreme inputs, exact
duplicates and leakage) read only the data and run at the start of every `train` as
warnings; the others need the model's frozen features, computed once for all of them:
near duplicates (cosine of pooled embeddings), suspected label errors (confident learning,
Northcutt et al. 2021, through `cleanlab`, on a cross-validated linear probe), and the shift
between a source dataset and this one (a classifier two-sample test, Lopez-Paz & Oquab 2017:
if a probe can tell the two apart, they differ; its out-of-fold AUC says how much).
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from statistics import median

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from tsuika.data.splits import Examples, Splits

IMBALANCE = 3.0
"""Largest/smallest class count from which imbalance is worth acting on (a majority
classifier then scores ≥ 75 % on two classes while learning nothing)."""
EXTREME_LENGTH = 8.0
"""Texts more than this many times longer or shorter (in characters) than the median."""
SMALL_IMAGE = 16
"""Images with a shorter side under this many pixels carry little to upsample from."""
NEAR_DUPLICATE = 0.95
"""Cosine similarity of pooled embeddings from which two inputs count as near duplicates
(see `NEAR_DUPLICATE` in bench/RESULTS.md for the measured separation on the reviews)."""
TRUSTED_PROBE = 0.9
"""Below this out-of-fold accuracy, a finding of label errors says that many of them are the
probe's own mistakes (on the reviews, a 74.6 % probe flags 18.7 % of the rows)."""
SHOWN = 5
"""Examples kept per finding."""
SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}


@dataclass
class Finding:
    check: str
    verdict: str
    """`ok`, `warning` (worth a look) or `problem` (will distort training or its scores)."""
    count: int
    text: str
    fix: str = ""
    examples: list[dict] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def where(examples: Examples, split: str, index: int, label_column: str | None) -> dict:
    """One example as a finding shows it: its split, its row in the file (or its path), a
    short view of the input and its label."""
    row: dict = {"split": SPLIT_NAMES[split]}
    if examples.lines:
        row["line"] = examples.lines[index]
    elif examples.names:
        row["file"] = examples.names[index]
    value = examples.inputs[index]
    if isinstance(value, str):
        row["input"] = value if len(value) <= 120 else value[:117] + "…"
    if label_column is not None:
        row["label"] = examples.targets[label_column][index]
    return row


def _label_column(examples: Examples) -> str | None:
    return next(iter(examples.targets), None)


def _where(splits: Splits, split: str, index: int) -> dict:
    examples = getattr(splits, split)
    return where(examples, split, index, _label_column(examples))


# -- cheap checks: the data alone ---------------------------------------------------------------
BALANCE_FIX = (
    "read macro-F1, not accuracy: the default `train.balance: auto` weighs the classes "
    "equally and selects on macro-F1 from this ratio on; set `train.balance: sampler` to "
    "draw batches evenly instead (`weights`: weigh them whatever the ratio)"
)
"""What to do about imbalance: `auto` (the default) handles it already; say so, and how to
change the way."""


def class_balance(
    splits: Splits, columns: list[str], classes: dict[str, list[str]] | None = None
) -> list[Finding]:
    """Per label column: the imbalance ratio of the training split, each class named by its
    label (`classes`: column → class names, where the splits hold indices)."""
    findings = []
    for column in columns:
        names = (classes or {}).get(column)
        counts = Counter(splits.train.targets[column])
        if len(counts) < 2:
            continue
        (top, most), (rare, least) = counts.most_common()[0], counts.most_common()[-1]
        ratio = most / least
        shown = {class_name(k, names): n for k, n in sorted(counts.items())}
        numbers = {"counts": shown, "ratio": round(ratio, 2)}
        named = f" in `{column}`" if len(columns) > 1 else ""
        if ratio < IMBALANCE:
            text = f"classes{named} are balanced enough (largest/smallest {ratio:.1f})"
            findings.append(Finding("balance", "ok", 0, text, numbers=numbers))
            continue
        top, rare = class_name(top, names), class_name(rare, names)
        text = (
            f"imbalance{named}: `{top}` has {most} training examples, `{rare}` {least} "
            f"(ratio {ratio:.1f}); accuracy will flatter a model that favours `{top}`"
        )
        findings.append(Finding("balance", "warning", least, text, BALANCE_FIX, numbers=numbers))
    return findings


def class_name(value: object, names: list[str] | None) -> object:
    """A class as people know it: its label where `value` is its index in `names` (what a
    classification task's encoded splits hold), else `value` as it is."""
    if names and isinstance(value, int) and 0 <= value < len(names):
        return names[value]
    return value


def input_sizes(splits: Splits) -> list[Finding]:
    """Empty texts, texts far longer or shorter than the rest, tiny images."""
    empty, extreme, tiny = [], [], []
    texts = [x for x in splits.train.inputs if isinstance(x, str)]
    middle = median(len(x) for x in texts) if texts else 0
    for split in SPLITS:
        examples: Examples = getattr(splits, split)
        column = _label_column(examples)
        for index, value in enumerate(examples.inputs):
            if isinstance(value, str):
                size = len(value.strip())
                if size == 0:
                    empty.append(where(examples, split, index, column))
                elif middle and not middle / EXTREME_LENGTH <= size <= middle * EXTREME_LENGTH:
                    extreme.append(where(examples, split, index, column) | {"characters": size})
            elif isinstance(value, torch.Tensor) and min(value.shape[-2:]) < SMALL_IMAGE:
                shown = where(examples, split, index, column)
                tiny.append(shown | {"size": list(value.shape[-2:])})
    findings = []
    if empty:
        findings.append(
            Finding(
                "empty",
                "problem",
                len(empty),
                f"{len(empty)} empty input(s): the model sees only padding",
                "remove these rows or fill in their text",
                empty[:SHOWN],
            )
        )
    if extreme:
        findings.append(
            Finding(
                "length",
                "warning",
                len(extreme),
                f"{len(extreme)} text(s) over {EXTREME_LENGTH:g}× longer or shorter than the "
                f"median ({middle:g} characters): long ones are cut at `train.max_length` "
                "tokens, very short ones carry little",
                "check them for pasted documents, stray fragments or a wrong column",
                extreme[:SHOWN],
            )
        )
    if tiny:
        findings.append(
            Finding(
                "size",
                "warning",
                len(tiny),
                f"{len(tiny)} image(s) under {SMALL_IMAGE} px on a side",
                "check them for thumbnails or icons in the wrong folder",
                tiny[:SHOWN],
            )
        )
    if not findings:
        findings.append(Finding("inputs", "ok", 0, "no empty or extreme inputs"))
    return findings


def fingerprint(value) -> str:
    """What counts as the same input: text up to case and spacing, images byte for byte, an
    example of several parts (a captioned image) part by part."""
    if isinstance(value, str):
        return " ".join(value.casefold().split())
    if is_dataclass(value):
        return "|".join(fingerprint(getattr(value, f.name)) for f in fields(value))
    data = value.numpy().tobytes() if isinstance(value, torch.Tensor) else repr(value).encode()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def exact_duplicates(splits: Splits) -> list[Finding]:
    """Inputs that occur twice: within the training split (same or conflicting labels) and
    across splits (leakage: the test score then measures memory)."""
    seen: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for split in SPLITS:
        for index, value in enumerate(getattr(splits, split).inputs):
            seen[fingerprint(value)].append((split, index))
    within, conflicting, leaks = [], [], []
    for places in seen.values():
        if len(places) < 2:
            continue
        rows = [_where(splits, s, i) for s, i in places]
        if len({s for s, _ in places}) > 1:
            leaks.append(rows)
        elif len({str(r.get("label")) for r in rows}) > 1:
            conflicting.append(rows)
        else:
            within.append(rows)
    return _duplicate_findings("exact", within, conflicting, leaks)


def _duplicate_findings(kind: str, within: list, conflicting: list, leaks: list) -> list:
    findings = []
    if leaks:
        findings.append(
            Finding(
                "leakage",
                "problem",
                len(leaks),
                f"{len(leaks)} input(s) appear ({kind}) in more than one of train, "
                "validation and test: scores on them measure memory, not generalisation",
                "remove them from the validation/test files (or from train)",
                leaks[:SHOWN],
            )
        )
    if conflicting:
        findings.append(
            Finding(
                "duplicates",
                "problem",
                len(conflicting),
                f"{len(conflicting)} input(s) repeated ({kind}) with different labels",
                "decide on one label per input and drop the others",
                conflicting[:SHOWN],
            )
        )
    if within:
        findings.append(
            Finding(
                "duplicates",
                "warning",
                len(within),
                f"{len(within)} input(s) repeated ({kind}) within a split: they weigh "
                "double in training and in the scores",
                "drop the repeats unless the weighting is intended",
                within[:SHOWN],
            )
        )
    if not findings:
        findings.append(Finding("duplicates", "ok", 0, f"no {kind} duplicates or leaks"))
    return findings


def class_names(task: object) -> dict[str, list[str]]:
    """A classification task's column → class names; none for other tasks (a causal LM's
    `labels` is a method, regression has no classes)."""
    names = getattr(task, "labels", None)
    return names if isinstance(names, dict) else {}


def with_label_names(findings: list[Finding], task: object) -> list[Finding]:
    """Examples show class names, not the indices the splits hold (a classification task's
    `labels`: column → class names; the first column's serve `label` and `probe_says`).
    Other tasks' targets are shown as they are."""
    classes = next(iter(class_names(task).values()), None)
    if not classes:
        return findings

    def named(row: dict) -> dict:
        return {
            key: class_name(value, classes) if key in ("label", "probe_says") else value
            for key, value in row.items()
        }

    for finding in findings:
        finding.examples = [
            [named(r) for r in e] if isinstance(e, list) else named(e) for e in finding.examples
        ]
    return findings


def label_columns(task: object) -> list[str]:
    """The target columns whose classes can be counted (a task whose targets are classes)."""
    return list(task.columns) if task.has_classes else []  # type: ignore[attr-defined]


def data_checks(splits: Splits, task: object) -> list[Finding]:
    """The checks that read only the data, for `task`'s splits, classes shown by name: what
    every `train` runs first and `tsuika check` starts from."""
    columns = label_columns(task)
    checked = task.checked_splits(splits)  # type: ignore[attr-defined]
    return with_label_names(cheap_checks(checked, columns, class_names(task)), task)


def cheap_checks(
    splits: Splits, label_columns: list[str], classes: dict[str, list[str]] | None = None
) -> list[Finding]:
    """What reads only the data: run at the start of every `train` (`classes`: column →
    class names, for splits that hold class indices)."""
    return [
        *class_balance(splits, label_columns, classes),
        *input_sizes(splits),
        *exact_duplicates(splits),
    ]


# -- checks on frozen features -----------------------------------------------------------------
def near_duplicates(
    splits: Splits, features: dict[str, np.ndarray], threshold: float = NEAR_DUPLICATE
) -> list[Finding]:
    """Pairs whose pooled embeddings have cosine ≥ `threshold` but that are not exact
    duplicates (those are reported by `exact_duplicates`)."""
    unit = {s: _normalised(f) for s, f in features.items()}
    within, conflicting, leaks = [], [], []
    pairs = [("train", "train"), ("train", "val"), ("train", "test"), ("val", "test")]
    for a, b in pairs:
        if not len(unit[a]) or not len(unit[b]):
            continue
        for i, j, cosine in _close_pairs(unit[a], unit[b], threshold, same=a == b):
            if fingerprint(getattr(splits, a).inputs[i]) == fingerprint(
                getattr(splits, b).inputs[j]
            ):
                continue
            rows = [
                _where(splits, a, i) | {"cosine": round(float(cosine), 4)},
                _where(splits, b, j),
            ]
            if a != b:
                leaks.append(rows)
            elif rows[0].get("label") != rows[1].get("label"):
                conflicting.append(rows)
            else:
                within.append(rows)
    return _duplicate_findings(f"near, cosine ≥ {threshold:g}", within, conflicting, leaks)


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _close_pairs(a: np.ndarray, b: np.ndarray, threshold: float, same: bool):
    """(i, j, cosine) with cosine ≥ threshold, in blocks of rows (memory stays small)."""
    for start in range(0, len(a), 1024):
        block = a[start : start + 1024] @ b.T
        if same:  # each pair once, never an example with itself
            rows = np.arange(start, start + len(block))[:, None]
            block = np.where(np.arange(len(b))[None, :] > rows, block, -1.0)
        for i, j in zip(*np.nonzero(block >= threshold), strict=True):
            yield start + int(i), int(j), block[i, j]


def label_errors(examples: Examples, features: np.ndarray, column: str, seed: int = 0) -> Finding:
    """Rows whose label a cross-validated probe on the frozen features confidently
    contradicts (cleanlab's `find_label_issues`), most suspicious first."""
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    names = sorted(set(examples.targets[column]), key=str)
    labels = np.array([names.index(v) for v in examples.targets[column]])
    folds = min(5, int(np.bincount(labels).min()))
    if len(names) < 2 or folds < 2:
        return Finding("label-errors", "ok", 0, "too few examples per class to cross-validate")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=0.1))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        probabilities = cross_val_predict(probe, features, labels, cv=split, method="predict_proba")
        issues = find_label_issues(
            labels, probabilities, return_indices_ranked_by="self_confidence"
        )
    accuracy = float((probabilities.argmax(1) == labels).mean())
    fraction = len(issues) / len(labels)
    named = f" in `{column}`" if len(examples.targets) > 1 else ""  # multi-task: which column
    numbers = {"probe_accuracy": round(accuracy, 4), "fraction": round(fraction, 4)}
    if not len(issues):
        text = f"no suspected label errors{named} (cross-validated probe accuracy {accuracy:.1%})"
        return Finding("label-errors", "ok", 0, text, numbers=numbers)
    shown = [
        where(examples, "train", int(i), column)
        | {"probe_says": names[int(probabilities[i].argmax())]}
        for i in issues[:SHOWN]
    ]
    text = (
        f"{len(issues)} suspected label error(s){named} ({fraction:.1%} of the "
        f"training split): a probe that scores {accuracy:.1%} out of fold confidently "
        "disagrees with their label"
    )
    if accuracy < TRUSTED_PROBE:
        text += (
            "; the probe itself errs often, so many of these are its mistakes, not the "
            "labels': read them as a list ordered by suspicion"
        )
    fix = "look at these rows first (most suspicious first); relabel or drop the wrong ones"
    return Finding("label-errors", "warning", len(issues), text, fix, shown, numbers)


def domain_shift(
    source: np.ndarray, target: np.ndarray, seed: int = 0, resamples: int = 500
) -> Finding:
    """A classifier two-sample test: a probe tells source from target rows out of fold; its
    AUC is 0.5 when they are alike. The 95 % interval is a bootstrap over the rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([source, target])
    y = np.concatenate([np.zeros(len(source)), np.ones(len(target))]).astype(int)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=0.1))
    folds = StratifiedKFold(min(5, len(source), len(target)), shuffle=True, random_state=seed)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        scores = cross_val_predict(probe, x, y, cv=folds, method="predict_proba")[:, 1]
    auc = float(roc_auc_score(y, scores))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        rows = rng.integers(0, len(y), len(y))
        if 0 < y[rows].sum() < len(rows):
            draws.append(roc_auc_score(y[rows], scores[rows]))
    low, high = (float(v) for v in np.percentile(draws, [2.5, 97.5]))
    numbers = {"auc": round(auc, 4), "auc_low": round(low, 4), "auc_high": round(high, 4)}
    interval = f"AUC {auc:.3f} (95 % CI {low:.3f} to {high:.3f})"
    if low <= 0.5:
        text = f"no shift detected: a probe cannot tell source from target rows, {interval}"
        return Finding("shift", "ok", 0, text, numbers=numbers)
    size = "strong" if auc >= 0.8 else "moderate" if auc >= 0.6 else "slight"
    verdict = "ok" if size == "slight" else "warning"
    text = f"{size} domain shift: a probe tells source from target rows, {interval}"
    fix = (
        "expect the pretrained features to fit less well: fine-tune deeper than a frozen "
        "backbone, and validate on target data only"
        if verdict == "warning"
        else ""
    )
    return Finding("shift", verdict, len(target), text, fix, numbers=numbers)
