"""Edited or damaged run files: issue 31 item 7, and its property test.

`tsuika report`, `compare` and `export --format hf` read summary.json, metrics.jsonl and
predictions.jsonl through one schema (`tsuika.run_files`). A file that is valid JSON but not
what tsuika wrote (a key removed, a list where an object was) ends in one error line naming
the file and the key or line, exit code 2 — before, in a traceback from the chart or table
that used the value. The property test edits any field of a finished run's files with any
JSON value and shows each command ends in a result or that one error line.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tsuika
from tsuika.cli import main

SUMMARY, METRICS, PREDICTIONS = "summary.json", "metrics.jsonl", "predictions.jsonl"
COUNTER = itertools.count()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each case gets its own copy of the run and its outputs (module-wide: a
    hypothesis example may not use a function-scoped folder)."""
    return tmp_path_factory.mktemp("edited-runs")


def run_copy(tiny_run: tsuika.Run, scratch: Path) -> Path:
    copy = Path(tempfile.mkdtemp(dir=scratch)) / "run"
    shutil.copytree(tiny_run.path, copy)
    return copy


def command_line(command: str, run: Path, intact: Path, scratch: Path) -> list[str]:
    """`command` on the edited `run` (compare: beside an intact one), writing under scratch."""
    out = scratch / f"out-{next(COUNTER)}"
    if command == "report":
        return ["report", str(run)]
    if command == "compare":
        return ["compare", str(run), str(intact), "--out", f"{out}.html"]
    return ["export", str(run), "--format", "hf", "--out", str(out)]


def ends_cleanly(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The command's exit code and error line: 0, or 2 with one line and no traceback."""
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code in (0, 2), (code, err)
    if code == 2:
        assert err.startswith("error: "), err
        assert len(err.splitlines()) == 1, err
    assert "Traceback" not in captured.err
    return code, err


# -- the cases of item 7 ---------------------------------------------------------------------


def edit_summary(change: Callable[[dict], Any]) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        summary = json.loads((run / SUMMARY).read_text(encoding="utf-8"))
        change(summary)
        (run / SUMMARY).write_text(json.dumps(summary), encoding="utf-8")

    return edit


def edit_line(name: str, number: int, change: Callable[[dict], Any]) -> Callable[[Path], None]:
    """Line `number` of a JSON-lines file replaced by what `change` returns for its record,
    written as tsuika writes (`ensure_ascii=False`)."""

    def edit(run: Path) -> None:
        lines = (run / name).read_text(encoding="utf-8").splitlines()
        record = change(json.loads(lines[number - 1]))
        lines[number - 1] = json.dumps(record, ensure_ascii=False)
        (run / name).write_text("\n".join(lines) + "\n", encoding="utf-8")

    return edit


def without(key: str) -> Callable[[dict], dict]:
    return lambda record: {k: v for k, v in record.items() if k != key}


def latin1_prediction(run: Path) -> None:
    path = run / PREDICTIONS
    lines = path.read_bytes().splitlines(keepends=True)
    record = {**json.loads(lines[1]), "input": "café"}
    lines[1] = json.dumps(record, ensure_ascii=False).encode("latin-1") + b"\n"
    path.write_bytes(b"".join(lines))


CASES = {  # name → (the edit, the file the error names, what else it names)
    "selection-removed": (edit_summary(lambda s: s.pop("selection")), SUMMARY, "`selection`"),
    "model-removed": (edit_summary(lambda s: s.pop("model")), SUMMARY, "`model`"),
    "task-removed": (edit_summary(lambda s: s.pop("task")), SUMMARY, "`task`"),
    "test-a-list": (edit_summary(lambda s: s.update(test=[0.5])), SUMMARY, "`test`"),
    "baselines-a-list": (
        edit_summary(lambda s: s.update(baselines=list(s["baselines"]))),
        SUMMARY,
        "`baselines`",
    ),
    "verdicts-a-string": (edit_summary(lambda s: s.update(verdicts="good")), SUMMARY, "`verdicts`"),
    "data-a-string": (edit_summary(lambda s: s.update(data="reviews")), SUMMARY, "`data`"),
    "a-key-with-a-newline": (
        edit_summary(
            lambda s: s["baselines"].update({"probe\nb": {"title": "p", "accuracy": "high"}})
        ),
        SUMMARY,
        "`baselines.probe\\nb.accuracy` is not a number",
    ),
    "metrics-line-a-list": (edit_line(METRICS, 2, lambda r: list(r)), METRICS, "line 2"),
    "metrics-line-a-number": (edit_line(METRICS, 1, lambda r: 3), METRICS, "line 1"),
    "prediction-a-string": (edit_line(PREDICTIONS, 2, lambda r: "good"), PREDICTIONS, "line 2"),
    "prediction-without-score": (edit_line(PREDICTIONS, 3, without("score")), PREDICTIONS, "score"),
    "predictions-not-utf8": (latin1_prediction, PREDICTIONS, "line 2 is not UTF-8"),
}
READERS = {  # the files each command reads (export: not the epochs)
    "report": {SUMMARY, METRICS, PREDICTIONS},
    "compare": {SUMMARY, METRICS, PREDICTIONS},
    "export": {SUMMARY, PREDICTIONS},
}


@pytest.mark.parametrize(
    ("command", "case"),
    [(c, name) for c in READERS for name, (_, file, _) in CASES.items() if file in READERS[c]],
)
def test_an_edited_run_file_is_one_error_line_naming_it(
    command: str, case: str, tiny_run: tsuika.Run, scratch: Path, capsys
) -> None:
    edit, file, detail = CASES[case]
    run = run_copy(tiny_run, scratch)
    edit(run)
    code, err = ends_cleanly(command_line(command, run, tiny_run.path, scratch), capsys)
    assert code == 2
    assert str(run / file) in err and detail in err, err
    assert "the run folder is damaged" in err and "restore it" in err
    assert not (run / "report.html").exists()


def test_the_intact_run_still_reports_compares_and_exports(
    tiny_run: tsuika.Run, scratch: Path, capsys
) -> None:
    run = run_copy(tiny_run, scratch)
    for command in READERS:
        assert ends_cleanly(command_line(command, run, tiny_run.path, scratch), capsys)[0] == 0


def gain_beside_its_interval(summary: dict) -> None:
    gain = summary["baselines"]["majority"]["gain"]
    gain["low"], gain["high"] = gain["gain"] + 0.1, gain["gain"] + 0.2


ODD_BUT_VALID = {  # edits that are not damage: the commands still draw their pages
    # A percentile interval may miss its estimate; the error bar was a negative length.
    "gain-beside-its-interval": edit_summary(gain_beside_its_interval),
    # The learning-rate chart computed every step: 10¹⁵ of them ran out of memory.
    "schedule-of-10^15-steps": edit_summary(
        lambda s: s["training"]["schedule"].update(total_steps=10**15)
    ),
    "data-sizes-removed": edit_summary(lambda s: s.pop("data")),
    # A text holding a line separator is written as it is; it was cut into two bad lines.
    "an-input-with-a-line-separator": edit_line(
        PREDICTIONS, 2, lambda r: r | {"input": "good\u2028film\x0cnow"}
    ),
    "a-wrong-prediction-without-confidence": edit_line(
        PREDICTIONS, 2, lambda r: without("confidence")(r) | {"score": 0.0}
    ),
}


@pytest.mark.parametrize("case", ODD_BUT_VALID)
def test_odd_but_valid_run_files_still_report_and_compare(
    case: str, tiny_run: tsuika.Run, scratch: Path, capsys
) -> None:
    run = run_copy(tiny_run, scratch)
    ODD_BUT_VALID[case](run)
    for command in ("report", "compare"):
        assert ends_cleanly(command_line(command, run, tiny_run.path, scratch), capsys)[0] == 0


# -- the property test -----------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
REMOVED = "<removed>"
EDIT = JSON_VALUES | st.just(REMOVED)

SECTIONS: dict[str, Any] = {
    "recipe": {"method": "transfer", "reason": "few examples per class"},
    "plan": {
        "best": "transfer",
        "explanation": "transfer reached the best validation accuracy.",
        "trials": [
            {
                "strategy": "transfer",
                "settings": {},
                "state": "complete",
                "score": 0.75,
                "best_epoch": 2,
                "epochs": 3,
                "steps": 12,
                "seconds": 1.5,
                "scores": [0.5, 0.75, 0.7],
                "overfit": None,
                "why": None,
            },
            {
                "strategy": "lora",
                "settings": {},
                "state": "pruned",
                "score": None,
                "best_epoch": 0,
                "epochs": 1,
                "steps": 4,
                "seconds": 0.5,
                "scores": [],
                "overfit": None,
                "why": "successive halving",
            },
        ],
    },
    "distillation": {
        "teacher": {
            "run": "runs/teacher",
            "accuracy": 0.8,
            "parameters": 4000,
            "blocks": 2,
            "model_bytes": 16000,
            "latency_batch1_ms": 2.0,
            "latency_batch64_ms": 20.0,
        },
        "student": {
            "accuracy": 0.75,
            "parameters": 2000,
            "blocks": 1,
            "model_bytes": 8000,
            "latency_batch1_ms": 1.0,
            "latency_batch64_ms": 10.0,
        },
        "metric": "accuracy",
        "retained_percent": 93.7,
        "speedup_batch1": 2.0,
        "speedup_batch64": 2.0,
        "size_ratio": 0.5,
        "temperature": 2.0,
        "alpha": 0.5,
        "teacher_cached": True,
        "unlabelled": 0,
    },
    "concept": {
        "fidelity": 0.6,
        "base_fidelity": 0.1,
        "prior_preservation": 0.9,
        "base_prior_preservation": 0.95,
        "prior_change": {"change": -0.05, "low": -0.2, "high": 0.1},
        "per_class": {"shoe": [0.9, 0.85]},
        "prompt": "a photo of sks shoe",
        "images_per_prompt": 4,
    },
    "forgetting": {
        "data": "retain.csv",
        "examples": 40,
        "metric": "accuracy",
        "higher_is_better": True,
        "pretrained": 0.7,
        "kept": 0.65,
        "change": -0.05,
        "interval": [-0.1, 0.0],
        "verdict": "retained",
        "curve": [],
    },
}
"""Well-formed summary sections the tiny run lacks (other methods' and `tsuika plan`'s), so
that their fields are edited too."""


def places(value: Any, at: tuple = ()) -> Iterator[tuple]:
    """The path of every key and list item inside `value`, at any depth."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, inner in items:
        yield (*at, key)
        if isinstance(inner, dict | list) and inner:
            yield from places(inner, (*at, key))


def edited(document: Any, place: tuple, value: Any) -> Any:
    """`document` with the item at `place` replaced by `value` (or removed)."""
    *parents, last = place
    holder = document
    for key in parents:
        holder = holder[key]
    if value != REMOVED:
        holder[last] = value
    elif isinstance(holder, dict):
        del holder[last]
    else:
        holder.pop(last)
    return document


def edit_any_run_file(run: Path, data: st.DataObject) -> None:
    """One edit to one of the three files: any field of the summary (at any depth), or one
    line of metrics.jsonl or predictions.jsonl — replaced whole, or one of its fields."""
    name = data.draw(st.sampled_from([SUMMARY, METRICS, PREDICTIONS]), "file")
    path = run / name
    if name == SUMMARY:
        summary = json.loads(path.read_text(encoding="utf-8")) | json.loads(json.dumps(SECTIONS))
        place = data.draw(st.sampled_from(sorted(places(summary), key=str)), "place")
        path.write_text(json.dumps(edited(summary, place, data.draw(EDIT, "value"))))
        return
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    number = data.draw(st.integers(0, len(lines)), "line")  # len(lines): a line added
    if number < len(lines) and data.draw(st.booleans(), "one field"):
        place = data.draw(st.sampled_from(sorted(places(lines[number]), key=str)), "place")
        edited(lines[number], place, data.draw(EDIT, "value"))
    else:
        lines[number : number + 1] = [data.draw(JSON_VALUES, "line value")]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


def any_edit_ends_cleanly(command: str, tiny_run, scratch: Path, data, capsys) -> None:
    run = run_copy(tiny_run, scratch)
    edit_any_run_file(run, data)
    ends_cleanly(command_line(command, run, tiny_run.path, scratch), capsys)
    shutil.rmtree(run.parent)


def bounded(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],  # capsys: read each time
    )


@bounded(40)
@given(data=st.data())
def test_report_of_any_edit_ends_in_a_page_or_one_error_line(tiny_run, scratch, data, capsys):
    any_edit_ends_cleanly("report", tiny_run, scratch, data, capsys)


@bounded(40)
@given(data=st.data())
def test_compare_of_any_edit_ends_in_a_page_or_one_error_line(tiny_run, scratch, data, capsys):
    any_edit_ends_cleanly("compare", tiny_run, scratch, data, capsys)


@bounded(20)
@given(data=st.data())
def test_export_of_any_edit_ends_in_a_folder_or_one_error_line(tiny_run, scratch, data, capsys):
    any_edit_ends_cleanly("export", tiny_run, scratch, data, capsys)
