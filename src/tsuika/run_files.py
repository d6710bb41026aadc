"""The files a finished run keeps besides its model — summary.json, metrics.jsonl and
predictions.jsonl — read through one schema, as model/meta.json is (`methods.saved`).

A run folder may come from anyone, and these are JSON files people open and edit. `tsuika
report`, `compare` and `export` read them only through the readers here, so a key removed or
a value of the wrong kind is one error naming the file and the key (or line), not a traceback
from deep inside a chart. The schema holds what those commands rely on, typed as tsuika writes
it for every task and for `tsuika plan`; a key may be absent where a run can lack it (an
older run, a method without baselines), but never `null` where tsuika writes a value. Keys the
schema does not name are kept unchecked (`extra="allow"`), and the readers return the file's
own JSON, so what a report shows does not depend on the check.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NotRequired

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic reads TypedDicts from here before 3.12

from tsuika.methods.base import damaged
from tsuika.tasks.base import Task
from tsuika.tasks.classify import Classify

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
PREDICTIONS = "predictions.jsonl"

# Strict: a number is a JSON number (not "0.5", not true), text is a JSON string. A float
# field takes a JSON integer too, as tsuika writes `0` for a zero time.
CHECKED = ConfigDict(strict=True, extra="allow")

Count = Annotated[int, Field(ge=0, le=2**53)]
"""Epochs, steps, sizes: never negative, and within what a float (a chart's axis) holds."""
Pair = Annotated[list[float], Field(min_length=2, max_length=2)]
"""Before and after, or an interval's low and high."""


def _must(condition: bool, problem: str) -> None:
    if not condition:
        raise ValueError(problem)


def _key(*parts: object) -> str:
    """A key path as the error shows it, on one line: a newline or other unprintable
    character in an edited key is escaped."""
    dotted = ".".join(str(part) for part in parts)
    return "`" + "".join(c if c.isprintable() else ascii(c)[1:-1] for c in dotted) + "`"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- summary.json ----------------------------------------------------------------------------


@with_config(CHECKED)
class Selection(TypedDict):
    metric: str


@with_config(CHECKED)
class Gain(TypedDict):
    """A paired-bootstrap gain and its 95 % interval."""

    gain: float
    low: float
    high: float


@with_config(CHECKED)
class Strongest(Gain):
    """The gain over the strongest baseline, which it names."""

    baseline: str


@with_config(CHECKED)
class Baseline(TypedDict):
    """Its scores are keyed by metric name, checked against `test` in `_scores_measured`."""

    title: str
    seconds: NotRequired[float]
    gain: NotRequired[Gain]


@with_config(CHECKED)
class DataSizes(TypedDict):
    train: NotRequired[Count]
    validation: NotRequired[Count]
    test: NotRequired[Count]
    notes: NotRequired[list[str]]


@with_config(CHECKED)
class Group(TypedDict):
    name: str
    parameters: Count
    trained: bool
    lr: NotRequired[float | None]


@with_config(CHECKED)
class Parameters(TypedDict):
    total: NotRequired[Count]
    trained: NotRequired[Count]
    trained_groups: NotRequired[list[str]]
    groups: NotRequired[list[Group]]


def _complete_schedule(schedule: dict) -> dict:
    # A head solved in closed form steps nothing and records an empty schedule.
    if schedule.get("rates"):
        for key in ("kind", "total_steps", "warmup_steps"):
            _must(key in schedule, f"has rates but no `{key}`")
    return schedule


@with_config(CHECKED)
class Schedule(TypedDict):
    kind: NotRequired[str]
    total_steps: NotRequired[Count]
    warmup_steps: NotRequired[Count]
    rates: NotRequired[dict[str, float]]


@with_config(CHECKED)
class Training(TypedDict):
    epochs_run: NotRequired[Count]
    best_epoch: NotRequired[Count]
    stopped_early: NotRequired[bool]
    optimizer_steps: NotRequired[Count]
    processes: NotRequired[Count]
    sharded: NotRequired[bool]
    schedule: NotRequired[Annotated[Schedule, AfterValidator(_complete_schedule)]]


@with_config(CHECKED)
class Verdict(TypedDict):
    text: NotRequired[str]


def _example_rows(examples: list) -> list:
    """A finding's examples: rows (each naming its split), or groups of rows (duplicates)."""
    for example in examples:
        rows = example if isinstance(example, list) else [example]
        for row in rows:
            _must(
                isinstance(row, dict) and isinstance(row.get("split"), str),
                "has an example that is not a row naming its `split`",
            )
    return examples


@with_config(CHECKED)
class Finding(TypedDict):
    check: str
    verdict: str
    text: str
    fix: NotRequired[str]
    examples: NotRequired[Annotated[list, AfterValidator(_example_rows)]]


@with_config(CHECKED)
class Memory(TypedDict):
    peak_rss_mb: float
    peak_cuda_mb: NotRequired[float]


@with_config(CHECKED)
class Disk(TypedDict):
    model_bytes: NotRequired[Count]
    adapter_bytes: NotRequired[Count]


@with_config(CHECKED)
class Throughput(TypedDict):
    tokens_per_second: NotRequired[float]


@with_config(CHECKED)
class Recipe(TypedDict):
    reason: str


@with_config(CHECKED)
class Trial(TypedDict):
    strategy: str
    state: str
    score: float | None
    epochs: Count
    steps: Count
    seconds: float


@with_config(CHECKED)
class Plan(TypedDict):
    """What `tsuika plan` adds to the summary of the run it chose."""

    explanation: str
    trials: NotRequired[list[Trial]]


@with_config(CHECKED)
class Side(TypedDict):
    """Teacher or student; its scores are keyed by metric name."""

    parameters: Count
    blocks: Count | None
    model_bytes: Count
    latency_batch1_ms: float
    latency_batch64_ms: float


def _sides_scored(figures: dict) -> dict:
    metric = figures["metric"]
    for side in ("teacher", "student"):
        _must(_is_number(figures[side].get(metric)), f"has no number for {_key(side, metric)}")
    return figures


@with_config(CHECKED)
class Distillation(TypedDict):
    metric: str
    teacher: Side
    student: Side
    retained_percent: NotRequired[float | None]
    speedup_batch1: float
    speedup_batch64: float
    size_ratio: float
    temperature: float
    alpha: float


@with_config(CHECKED)
class Concept(TypedDict):
    fidelity: float
    base_fidelity: float
    prior_preservation: float
    base_prior_preservation: float
    per_class: dict[str, Pair]
    prompt: str
    images_per_prompt: Count


@with_config(CHECKED)
class Forgetting(TypedDict):
    data: Any
    examples: Count
    metric: str
    pretrained: float
    kept: float
    change: float
    interval: Pair
    verdict: str


def _scores_measured(summary: dict) -> dict:
    """The selection metric has a test score, and every baseline's scores are numbers (the
    one it is judged by, wherever a gain was measured against it)."""
    metric, test = summary["selection"]["metric"], summary["test"]
    _must(metric in test, f"`test` has no score for the selection metric {_key(metric)}")
    for name, baseline in summary.get("baselines", {}).items():
        for key in test:
            if key in baseline or (key == metric and "gain" in baseline):
                where = _key("baselines", name, key)
                _must(_is_number(baseline.get(key)), f"{where} is not a number")
    return summary


@with_config(CHECKED)
class Summary(TypedDict):
    model: str
    task: str
    method: str
    model_kind: NotRequired[str]
    """`tsuika.model_kinds`; a run written before issue 32 has `modality` (text, image,
    text-to-image) instead, which `tsuika.model_kinds.recorded_model_kind` reads."""
    selection: Selection
    test: dict[str, float]
    data: NotRequired[DataSizes]
    parameters: NotRequired[Parameters]
    training: NotRequired[Training]
    baselines: NotRequired[dict[str, Baseline]]
    gain: NotRequired[Strongest]
    verdicts: NotRequired[dict[str, Verdict]]
    checks: NotRequired[list[Finding]]
    timings: NotRequired[dict[str, float]]
    memory: NotRequired[Memory]
    disk: NotRequired[Disk]
    throughput: NotRequired[Throughput]
    recipe: NotRequired[Recipe]
    plan: NotRequired[Plan]
    distillation: NotRequired[Annotated[Distillation, AfterValidator(_sides_scored)]]
    concept: NotRequired[Concept]
    forgetting: NotRequired[Forgetting]


SUMMARY_SCHEMA = TypeAdapter(Annotated[Summary, AfterValidator(_scores_measured)])

# -- metrics.jsonl ---------------------------------------------------------------------------

MEASURED = ("train_", "val_", "retain_")
"""Keys of an epoch record the charts draw: numbers, or null where not measured."""


def _measures_are_numbers(record: dict) -> dict:
    for key, value in record.items():
        if key.startswith(MEASURED) and value is not None:
            _must(_is_number(value), f"{_key(key)} is not a number")
    return record


@with_config(CHECKED)
class EpochRecord(TypedDict):
    phase: str
    epoch: Count


EPOCH_SCHEMA = TypeAdapter(Annotated[EpochRecord, AfterValidator(_measures_are_numbers)])

# -- predictions.jsonl -----------------------------------------------------------------------


@with_config(CHECKED)
class Prediction(TypedDict):
    """One test example. `truth` and `predicted` are checked against the task
    (`PREDICTION_CHECKS`): a label it knows, a number, or any answer."""

    index: Count
    input: Any
    truth: Any
    predicted: Any
    score: float
    loss: float
    confidence: NotRequired[float]
    tokens: NotRequired[Count]
    baselines: NotRequired[dict[str, Any]]


PREDICTION_SCHEMA = TypeAdapter(Prediction)


def _labels_known(task: Classify, record: dict) -> str | None:
    several = len(task.columns) > 1
    for key in ("truth", "predicted"):
        value = record[key]
        if several and not isinstance(value, dict):
            return f"`{key}` is not an object of labels by column"
        for column in task.columns:
            label = value.get(column) if several else value
            if not isinstance(label, str) or label not in task.labels[column]:
                where = _key(key, column) if several else _key(key)
                return f"{where} is not one of the run's labels"
    return None


def _numbers(task: Task, record: dict) -> str | None:
    bad = [key for key in ("truth", "predicted") if not _is_number(record[key])]
    return f"`{bad[0]}` is not a number" if bad else None


PREDICTION_CHECKS: dict[str, Callable[[Any, dict], str | None]] = {
    "classify": _labels_known,
    "multi-task": _labels_known,
    "regression": _numbers,
}
"""What a prediction's truth and answer are, by task (a causal LM's and a text-to-image run's
are any value: the report only shows and compares them)."""

# -- readers ---------------------------------------------------------------------------------


WORDS = {
    "dict_type": "is not an object",
    "list_type": "is not a list",
    "string_type": "is not text",
    "float_type": "is not a number",
    "int_type": "is not a whole number",
    "bool_type": "is not true or false",
    "greater_than_equal": "is negative",
    "less_than_equal": "is too large",
    "too_short": "is not a pair of numbers",
    "too_long": "is not a pair of numbers",
}


def _schema_problem(error: ValidationError) -> str:
    """The first thing wrong, in words, naming the key (`training.schedule.rates.head`)."""
    first = error.errors()[0]
    where = _key(*first["loc"]) if first["loc"] else ""
    kind = first["type"]
    if kind == "missing":
        return f"lacks {where}"
    if kind == "value_error":
        problem = str(first["ctx"]["error"])
    else:
        problem = WORDS.get(kind, f"is wrong ({first['msg']})")
    return f"{where} {problem}" if where else problem


def _text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise damaged(path, f"cannot be read ({error.strerror or error})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise damaged(path, f"line {line} is not UTF-8 text") from None


def _json(text: str, path: Path, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        detail = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
        raise damaged(path, f"{where}is not valid JSON ({detail})") from None
    except RecursionError:
        raise damaged(path, f"{where}is nested too deeply") from None


def _checked(schema: TypeAdapter, value: Any, path: Path, where: str) -> None:
    if not isinstance(value, dict):
        raise damaged(path, f"{where}is not a JSON object")
    try:
        schema.validate_python(value)
    except ValidationError as error:
        raise damaged(path, f"{where}{_schema_problem(error)}") from None


def read_summary(path: Path) -> dict[str, Any]:
    """A run's summary.json, checked; a missing file is the caller's to explain."""
    summary = _json(_text(path), path, "")
    _checked(SUMMARY_SCHEMA, summary, path, "")
    return summary


def _json_lines(path: Path, check: Callable[[dict, str], None]) -> list[dict[str, Any]]:
    """Each line of a JSON-lines file, checked; none when the file is absent (a run from
    before it was written)."""
    if not path.exists():
        return []
    rows = []
    # Lines end at "\n" only: a text may hold U+2028 or a form feed, which tsuika writes
    # as they are (`ensure_ascii=False`) and `str.splitlines` would cut at.
    for number, line in enumerate(_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"line {number} "
        row = _json(line, path, where)
        check(row, where)
        rows.append(row)
    return rows


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl: one record per epoch of every phase."""
    return _json_lines(path, lambda row, where: _checked(EPOCH_SCHEMA, row, path, where))


def read_predictions(path: Path, task: Task) -> list[dict[str, Any]]:
    """predictions.jsonl: one record per test example, its truth and answer as `task` has
    them."""
    task_check = PREDICTION_CHECKS.get(task.name)

    def check(row: dict, where: str) -> None:
        _checked(PREDICTION_SCHEMA, row, path, where)
        problem = task_check(task, row) if task_check else None
        if problem:
            raise damaged(path, f"{where}{problem}")

    return _json_lines(path, check)


__all__ = [
    "METRICS",
    "PREDICTIONS",
    "SUMMARY",
    "read_metrics",
    "read_predictions",
    "read_summary",
]
