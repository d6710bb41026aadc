"""`predictions.jsonl`: one line per test example — its input, truth, prediction, loss and
confidence, and every baseline's prediction — so the report (and `tsuika compare`) can be
rebuilt from the run folder, and a person can read what the model got wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tsuika.data.splits import Examples
from tsuika.evaluate.baselines import Baseline
from tsuika.files import write_atomic
from tsuika.models.base import State
from tsuika.tasks.base import Arrays, Task


def test_records(
    task: Task,
    test: Examples,
    outputs: State,
    predicted: Arrays,
    baselines: list[Baseline],
    lengths: list[int] | None,
) -> list[dict[str, Any]]:
    truth = task.truth(test)
    scores = task.per_example(truth, predicted)
    losses = task.losses(outputs, task.targets(test)).detach().float().numpy()
    confidence = task.confidence(outputs)
    truths, guesses = task.decoded(truth), task.decoded(predicted)
    others = {b.name: task.decoded(b.predicted) for b in baselines}
    records = []
    for row in range(len(test)):
        record: dict[str, Any] = {
            "index": row,
            "input": test.names[row] if test.names else test.inputs[row],
            "truth": truths[row],
            "predicted": guesses[row],
            "score": float(scores[row]),
            "loss": float(losses[row]),
        }
        if confidence is not None:
            record["confidence"] = float(confidence[row])
        if lengths is not None:
            record["tokens"] = int(lengths[row])
        if test.lines:
            record["line"] = test.lines[row]
        record["baselines"] = {name: values[row] for name, values in others.items()}
        records.append(record)
    return records


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    write_atomic(path, text)
