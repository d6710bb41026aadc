"""The `tsuika` command: parses, calls the Python API, prints. User mistakes exit with code 2
and one short message; nothing else is caught."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tsuika.config import path_given
from tsuika.errors import RunInterrupted, TsuikaError
from tsuika.files import atomic_file, refuse_link
from tsuika.methods import METHODS
from tsuika.model_kinds import TEXT_TO_IMAGE
from tsuika.tasks import TASKS

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
# Soft wrap: a long line (a run folder's path) is left for the terminal to wrap, so it is
# copied whole; rich would otherwise break it with a newline at the console's width.
out = Console(soft_wrap=True)


def results_table(summary: dict) -> Table:
    """Adapted model versus its baselines on the test split, in the task's metrics, with the
    gain over each baseline and its interval."""
    from tsuika.tasks import task_from_meta

    task = task_from_meta(summary["targets"])
    test = summary["test"]
    metrics = [m for m in task.shown if m in test]
    # Titles, headers and cells are rich markup: user text in them (a model folder such as
    # `m[/b]`, a label column's name) is escaped, or rich would read it as tags.
    table = Table(
        title=escape(
            f"{summary['method']} · {summary['task']} · {summary['model']} · "
            f"test n={summary['data']['test']}"
        )
    )
    table.add_column("model")
    for metric in metrics:
        table.add_column(escape(task.metric_title(metric)), justify="right")
    table.add_column("gain of the run (95% CI)", justify="right")
    table.add_column("seconds", justify="right")
    timings = summary.get("timings", {})
    adapted = sum(v for k, v in timings.items() if k not in ("baselines", "total"))
    table.add_row(
        f"[bold]{escape(summary['method'])}[/bold]",
        *(f"{test[m]:.3f}" for m in metrics),
        "",
        f"{adapted:.1f}" if timings else "",
    )
    for values in summary.get("baselines", {}).values():
        gain = values.get("gain")
        table.add_row(
            escape(values.get("title", "")),
            *(f"{values[m]:.3f}" for m in metrics),
            escape(task.gain_interval(gain)) if gain else "",
            f"{values.get('seconds', 0.0):.1f}",
        )
    return table


def distillation_table(kd: dict, task) -> Table:
    """Teacher and student side by side: score, size, latency on this machine."""
    metric = kd["metric"]
    table = Table("", escape(task.metric_title(metric)), "parameters", "MB", "ms @1", "ms @64")
    table.title = "teacher → student"
    for side in ("teacher", "student"):
        row = kd[side]
        table.add_row(
            side,
            f"{row[metric]:.4f}",
            f"{row['parameters'] / 1e6:.1f}M",
            f"{row['model_bytes'] / 2**20:.1f}",
            f"{row['latency_batch1_ms']:.1f}",
            f"{row['latency_batch64_ms']:.0f}",
        )
    retained = kd.get("retained_percent")
    table.caption = (
        f"retained {retained:.1f} % · " if retained is not None else ""
    ) + f"{kd['speedup_batch1']:.2f}× faster at batch 1, {kd['speedup_batch64']:.2f}× at 64"
    return table


def frozen_passes(passes: dict) -> str:
    return (
        f"frozen passes: {passes['reused']} read from the activation store, "
        f"{passes['computed']} computed"
    )


def print_summary(summary: dict) -> None:
    out.print(results_table(summary))
    if "distillation" in summary:
        from tsuika.tasks import task_from_meta

        task = task_from_meta(summary["targets"])
        out.print(distillation_table(summary["distillation"], task))
    for verdict in summary.get("verdicts", {}).values():
        out.print(f"• {escape(verdict['text'])}")
    timings = summary.get("timings", {})
    if timings:
        total = timings.get("total", 0.0)
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items() if k != "total")
        share = 100 * timings.get("baselines", 0.0) / total if total else 0.0
        out.print(f"time: {parts}; total {total:.1f}s (baselines {share:.1f} % of the run)")
    if (passes := summary.get("frozen_passes")) and passes.get("reused"):
        out.print(f"{frozen_passes(passes)} (`tsuika cache ls`)")
    out.print(f"run folder: {escape(summary['run'])}")
    report = Path(summary["run"]) / "report.html"
    if report.is_file():
        out.print(f"report: {escape(str(report))}")


def _path_text(text: str) -> str:
    """The parser of every path-valued argument and option: an empty one is refused, naming
    the option (`path_given`), never read as the current folder or the default data."""
    try:
        return str(path_given(text))
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _path(text: str) -> Path:
    return Path(_path_text(text))


CONFIG_SUFFIXES = (".yaml", ".yml")
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".jsonl", ".json", ".ndjson", ".txt", ".parquet", ".pq")
"""Tables `tsuika.data.formats` reads (and any of the text ones gzip-compressed, `.csv.gz`)."""
UNREAD_FORMATS = {
    ".xlsx": ("an Excel workbook", "save it as CSV UTF-8 (File → Save As)"),
    ".xls": ("an Excel workbook", "save it as CSV UTF-8 (File → Save As)"),
    ".ods": ("a spreadsheet", "save it as CSV"),
}
"""Data files the readers would take for CSV and fail on with a misleading message."""
MAX_CONFIG_BYTES = 1 << 20
"""Larger files of no known suffix are not read to see whether they are YAML (a model's
weights would be read whole for nothing)."""
# No `[key=value]`: rich would take it for a markup tag and print nothing.
ARGUMENTS_HELP = "CONFIG.yaml or DATA (a table or image folder: data.train), then key=value ..."
EXPECTED_ARGUMENT = (
    "give a CONFIG.yaml or the training data (a .csv/.tsv/.jsonl table, an image folder or "
    "bundled:NAME), then key=value"
)


def _split_args(args: list[str]) -> tuple[str | None, str | None, list[str]]:
    """`[CONFIG.yaml | DATA] key=value ...`: the one argument without `=` is a config file or
    the training data (`_config_or_data`); returns (config, data, key=value pairs)."""
    given = None
    overrides = []
    for arg in args:
        if not arg.strip():  # not a quiet "no config file"
            raise TsuikaError(f"an empty argument: {EXPECTED_ARGUMENT}")
        if "=" in arg:
            overrides.append(arg)
        elif given is None:
            given = arg
        else:
            raise TsuikaError(
                f"unexpected argument `{arg}`: give one CONFIG.yaml or data file, then key=value"
            )
    config, data = _config_or_data(given) if given is not None else (None, None)
    return config, data, overrides


def _config_or_data(arg: str) -> tuple[str | None, str | None]:
    """(arg, None) for a config file, (None, arg) for training data: a table by its suffix,
    a folder (of images) or a `bundled:` name. Anything else is refused before any run: read
    as YAML, a table failed as "not valid YAML", and a text file that parses as a plain
    string ran quietly on the default data."""
    path = Path(arg).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".gz":
        suffix = Path(path.stem).suffix.lower()
    if arg.startswith("bundled:") or path.is_dir() or suffix in TABLE_SUFFIXES:
        return None, arg
    if suffix in CONFIG_SUFFIXES:
        return arg, None
    if suffix in UNREAD_FORMATS:
        what, fix = UNREAD_FORMATS[suffix]
        raise TsuikaError(
            f"{arg} is {what}; tsuika reads tables as CSV, TSV, JSON or Parquet: {fix}"
        )
    if not path.exists():
        raise TsuikaError(f"{arg}: no such file or folder; {EXPECTED_ARGUMENT}")
    if _is_yaml_config(path):  # a config under another name (`settings.conf`)
        return arg, None
    raise TsuikaError(f"{arg} is neither a YAML config nor data; {EXPECTED_ARGUMENT}")


def _is_yaml_config(path: Path) -> bool:
    """A small file that holds a non-empty YAML mapping of settings."""
    from tsuika.config import read_yaml

    if not path.is_file() or path.stat().st_size > MAX_CONFIG_BYTES:
        return False
    try:
        return bool(read_yaml(path))
    except TsuikaError:
        return False


# From the registries, so a registered part is offered by the command line as it is.
METHOD_HELP = "auto (the default: chosen from the data) | " + " | ".join(METHODS)
TASK_HELP = "auto (the default: classify, or multi-task for several label columns) | " + (
    " | ".join(TASKS)
)


@app.command()
def train(
    args: Annotated[list[str] | None, typer.Argument(help=ARGUMENTS_HELP)] = None,
    model: Annotated[str | None, typer.Option(help="bundled name or local model folder")] = None,
    data: Annotated[
        str | None, typer.Option(parser=_path_text, help="training CSV/TSV/JSONL")
    ] = None,
    test: Annotated[
        str | None, typer.Option(parser=_path_text, help="test file (default: held out)")
    ] = None,
    method: Annotated[str | None, typer.Option(help=METHOD_HELP)] = None,
    task: Annotated[str | None, typer.Option(help=TASK_HELP)] = None,
    k: Annotated[int | None, typer.Option(help="examples per class to keep")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    output: Annotated[
        str | None, typer.Option(parser=_path_text, help="parent folder of runs")
    ] = None,
    name: Annotated[str | None, typer.Option(help="run folder name")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    resume: Annotated[
        Path | None, typer.Option(parser=_path, help="continue an interrupted run")
    ] = None,
    processes: Annotated[
        int, typer.Option(help="data-parallel processes (DDP), on each machine")
    ] = 1,
    machines: Annotated[int, typer.Option(help="machines taking part (run on each)")] = 1,
    machine_rank: Annotated[int, typer.Option(help="this machine's number, 0 = main")] = 0,
    main_address: Annotated[
        str | None, typer.Option(help="HOST:PORT of the main machine (several machines)")
    ] = None,
) -> None:
    """Adapt a model to your data: `tsuika train CONFIG.yaml key=value ...`, `tsuika train
    DATA.csv key=value ...` or flags."""
    from tsuika.api import train as train_api
    from tsuika.train.distributed import Machines, is_main_process, launch

    if processes < 1:
        raise TsuikaError(f"--processes {processes}: give at least 1 (1 is one process, no DDP)")
    cluster = Machines(machines, machine_rank, main_address)
    launching = processes * machines > 1
    if resume is not None:
        if args or any(v is not None for v in (model, data, test, method, task, k, epochs, name)):
            raise TsuikaError("--resume RUN takes no other config; the run's config.yaml is used")
        if launching:  # the run's checkpoints are read by every process
            from tsuika.api import resumable_config
            from tsuika.train.sharding import check_sharding

            check_sharding(resumable_config(resume, None, {}), processes * machines)
            raise typer.Exit(launch(_worker_arguments(ARGV[1:]), processes, cluster))
        with reporting_interrupts():
            resumed = train_api(resume=resume)
        if is_main_process():
            print_summary(resumed.summary)
        return

    flags = {
        "model": model,
        "method": method,
        "task": task,
        "data.train": data,
        "data.test": test,
        "data.k": k,
        "train.epochs": epochs,
        "output": output,
        "name": name,
    }
    config = _config_from(args, flags, quiet)
    if launching:
        from tsuika.api import check_before_launch

        # One message, not one per worker and torchrun's report.
        check_before_launch(config, processes * machines)
        raise typer.Exit(launch(_worker_arguments(ARGV[1:]), processes, cluster))
    with reporting_interrupts():
        run = train_api(config)
    if is_main_process():  # under --processes, one results table, not one per process
        print_summary(run.summary)


@app.command()
def distill(
    args: Annotated[list[str] | None, typer.Argument(help=ARGUMENTS_HELP)] = None,
    teacher: Annotated[
        Path | None, typer.Option(parser=_path, help="a finished run folder")
    ] = None,
    student: Annotated[
        str | None, typer.Option(help="`teacher` (its blocks) or a model name/folder")
    ] = None,
    blocks: Annotated[str | None, typer.Option(help="teacher blocks to keep, e.g. 1,3,6")] = None,
    data: Annotated[
        str | None, typer.Option(parser=_path_text, help="training CSV/TSV/JSONL or image folder")
    ] = None,
    test: Annotated[
        str | None, typer.Option(parser=_path_text, help="test file (default: held out)")
    ] = None,
    unlabelled: Annotated[
        str | None,
        typer.Option(parser=_path_text, help="inputs without labels, for the soft targets"),
    ] = None,
    k: Annotated[int | None, typer.Option(help="examples per class to keep")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    output: Annotated[
        str | None, typer.Option(parser=_path_text, help="parent folder of runs")
    ] = None,
    name: Annotated[str | None, typer.Option(help="run folder name")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Distil a trained run (the teacher) into a smaller student: `tsuika distill --teacher
    RUN [--student teacher|MODEL] [--blocks 1,3,6] [--unlabelled FILE] --data …`."""
    from tsuika.api import train as train_api

    flags = {
        "method": "distill",
        "distill.teacher": str(teacher) if teacher is not None else None,
        "distill.student": student,
        "distill.blocks": _block_list(blocks) if blocks is not None else None,
        "distill.unlabelled": unlabelled,
        "data.train": data,
        "data.test": test,
        "data.k": k,
        "train.epochs": epochs,
        "output": output,
        "name": name,
    }
    config = _config_from(args, flags, quiet)
    with reporting_interrupts():
        print_summary(train_api(config).summary)


def _config_from(args: list[str] | None, flags: dict, quiet: bool):
    """`[CONFIG.yaml | DATA] [key=value ...]` and a command's flags (dotted keys; None: not given)
    as one validated `Config`; key=value pairs win over flags."""
    from tsuika.config import load_config, merge, parse_overrides, set_dotted

    config_path, data, pairs = _split_args(args or [])
    overrides: dict = {}
    for key, value in flags.items():
        if value is not None:  # a flag's value is taken as given, never re-parsed
            set_dotted(overrides, key, value)
    if quiet:
        overrides["progress"] = False
    overrides = merge(overrides, parse_overrides(pairs))
    if data is not None:
        _refuse_second_data(data, overrides)
        set_dotted(overrides, "data.train", data)
    return load_config(config_path, overrides)


def _refuse_second_data(data: str, overrides: dict) -> None:
    """Data where the config goes, and --data or data.train=: neither may quietly win."""
    section = overrides.get("data")
    other = section.get("train") if isinstance(section, dict) else None
    if other is not None:
        raise TsuikaError(f"the training data is given twice ({data} and {other}); give it once")


def _block_list(text: str) -> list[int]:
    try:
        blocks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        blocks = []
    if not blocks:  # an empty list must not quietly mean the default half
        raise TsuikaError(
            f"--blocks {text!r}: give block numbers such as 1,3,6 (or leave --blocks out)"
        )
    return blocks


@app.command()
def check(
    args: Annotated[list[str] | None, typer.Argument(help=ARGUMENTS_HELP)] = None,
    data: Annotated[
        str | None, typer.Option(parser=_path_text, help="training CSV/TSV/JSONL or image folder")
    ] = None,
    test: Annotated[
        str | None, typer.Option(parser=_path_text, help="test file (default: held out)")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="model whose frozen features compare inputs")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(parser=_path_text, help="data of another domain, to measure the shift from"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="findings as JSON")] = False,
    quick: Annotated[bool, typer.Option(help="only the checks that need no model")] = False,
) -> None:
    """Is the data sound? Class balance, empty and extreme inputs, exact and near
    duplicates, leakage between splits, suspected label errors, and with --source the
    domain shift: each with a count, examples, a verdict and the fix."""
    from tsuika.advice.commands import check as check_api

    flags = {"data.train": data, "data.test": test, "model": model}
    config = _config_from(args, flags, quiet=True)
    findings = check_api(config, source=source, features=not quick)
    if as_json:
        out.print_json(json.dumps([f.as_dict() for f in findings]))
        return
    out.print(findings_table(findings))
    for finding in findings:
        if finding.verdict == "ok":
            continue
        out.print(f"[bold]{finding.check}[/bold]: {escape(finding.text)}")
        for example in finding.examples:
            out.print(f"    {escape(json.dumps(example, ensure_ascii=False))}")
        if finding.fix:
            out.print(f"  fix: {escape(finding.fix)}")


VERDICT_STYLES = {"ok": "green", "warning": "yellow", "problem": "bold red"}


def findings_table(findings: list) -> Table:
    table = Table("verdict", "check", "count", "finding", title="data checks")
    for finding in findings:
        style = VERDICT_STYLES.get(finding.verdict, "")
        table.add_row(
            f"[{style}]{finding.verdict}[/{style}]",
            finding.check,
            str(finding.count),
            escape(finding.text),
        )
    return table


@app.command()
def rank(
    args: Annotated[list[str] | None, typer.Argument(help=ARGUMENTS_HELP)] = None,
    data: Annotated[
        str | None, typer.Option(parser=_path_text, help="training CSV/TSV/JSONL or image folder")
    ] = None,
    models: Annotated[
        list[str] | None,
        typer.Option(help="candidates (repeat the option); random:NAME = NAME untrained"),
    ] = None,
    limit: Annotated[int, typer.Option(help="training examples scored per model")] = 2000,
    as_json: Annotated[bool, typer.Option("--json", help="scores as JSON")] = False,
) -> None:
    """Order candidate pretrained models for your data without fine-tuning any: LogME
    on their frozen features, and a cross-validated linear probe."""
    from tsuika.advice.commands import rank as rank_api

    config = _config_from(args, {"data.train": data}, quiet=True)
    results = rank_api(config, models=models, limit=limit)
    if as_json:
        out.print_json(json.dumps(results))
        return
    table = Table("rank", "model", "LogME", "probe (5-fold)", "seconds", title="model ranking")
    for place, row in enumerate(results, 1):
        seconds = row["seconds"]
        table.add_row(
            str(place),
            escape(row["model"]),
            f"{row['logme']:.4f}",
            f"{row['probe']:.3f} {row['probe_metric']}",
            f"{seconds['features']:.1f} features + {seconds['logme']:.2f} LogME + "
            f"{seconds['probe']:.1f} probe",
        )
    table.caption = f"{results[0]['examples']} training examples each; higher is better"
    out.print(table)


@app.command()
def plan(
    args: Annotated[list[str] | None, typer.Argument(help=ARGUMENTS_HELP)] = None,
    data: Annotated[
        str | None, typer.Option(parser=_path_text, help="training CSV/TSV/JSONL or image folder")
    ] = None,
    model: Annotated[str | None, typer.Option(help="the pretrained model to adapt")] = None,
    budget: Annotated[str, typer.Option(help="wall-clock for the search: 10m, 90s, 1h")] = "10m",
    max_steps: Annotated[
        int | None, typer.Option(help="optimizer steps for the search, over all trials")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the plan as JSON")] = False,
    storage: Annotated[
        str | None,
        typer.Option(help="a search shared by machines: plan.journal or postgresql://..."),
    ] = None,
    study: Annotated[str, typer.Option(help="the study's name in --storage")] = "tsuika-plan",
    search_only: Annotated[
        bool, typer.Option(help="with --storage: try candidates, leave the run to the main one")
    ] = False,
) -> None:
    """Try transfer, the small-data recipe, fine-tuning at two depths and rates and LoRA at
    two ranks under a budget (successive halving); train the best on validation once as a
    run, tested once, and say why it won. With --storage, several machines share the search."""
    from tsuika.plan import parse_budget
    from tsuika.plan import plan as plan_api
    from tsuika.report.sections import trial_row

    config = _config_from(args, {"data.train": data, "model": model}, quiet=as_json)
    with reporting_interrupts():  # the final run's Ctrl-C says how to resume it
        if search_only and storage is None:
            raise TsuikaError("--search-only shares a search: add --storage FILE or URL")
        result = plan_api(
            config,
            budget_seconds=parse_budget(budget),
            budget_steps=max_steps,
            final=not search_only,
            storage=storage,
            study=study,
        )
    if as_json:
        out.print_json(json.dumps(result))
        return
    table = Table("strategy", "outcome", "best val", "epochs", "steps", "seconds", title="plan")
    for trial in result["trials"]:
        table.add_row(*map(escape, trial_row(trial)))
    out.print(table)
    if search_only:
        out.print(f"trials recorded in {escape(str(storage))}; the main machine trains the winner")
        return
    out.print(escape(result["explanation"]))
    if passes := result.get("frozen_passes"):
        out.print(frozen_passes(passes))
    out.print(f"run: {escape(result['run'])}")


@app.command()
def inspect(
    model: Annotated[str, typer.Argument(help="bundled name or local model folder")],
    config: Annotated[
        Path | None, typer.Argument(parser=_path, help="a config: show what trains")
    ] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value ...")] = None,
) -> None:
    """Print a model's layer groups, parameter counts, and what trains under a config."""
    from tsuika.config import load_config
    from tsuika.inspect import describe

    config_path, data, pairs = _split_args([*([str(config)] if config else []), *(overrides or [])])
    data_pair = [f"data.train={data}"] if data is not None else []
    cfg = load_config(config_path, [*pairs, *data_pair, f"model={model}"])
    out.print(describe(cfg))


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(parser=_path, help="run folder")],
    data: Annotated[
        Path, typer.Option(parser=_path, help="labelled CSV/TSV/JSONL or image folder")
    ],
    input_column: Annotated[
        str | None, typer.Option(help="text/path column (default: the run's)")
    ] = None,
) -> None:
    """Score a trained run on a labelled file (its target columns are the run's)."""
    from tsuika.api import load

    metrics = load(run).evaluate(data, input_column)
    out.print_json(json.dumps(metrics))


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(parser=_path, help="run folder")],
    inputs: Annotated[list[str] | None, typer.Argument(help="texts (or image paths)")] = None,
    file: Annotated[Path | None, typer.Option(parser=_path, help="CSV/TSV/JSONL of inputs")] = None,
    input_column: Annotated[str, typer.Option(help="column of --file")] = "text",
) -> None:
    """Predict: `tsuika predict RUN "text" ...` or `--file texts.csv`; one tab-separated line
    per input (label and probability, labels per column, or a number)."""
    from tsuika.api import load
    from tsuika.data.tables import read_table

    given = list(inputs or [])
    if file is not None:
        given += read_table(file, input_column, []).texts
    if not given:
        raise TsuikaError("nothing to predict: give texts or --file")
    loaded = load(run)
    for line, item in zip(loaded.describe(given), given, strict=True):
        typer.echo(f"{line}\t{item}")


@app.command()
def generate(
    run: Annotated[
        Path, typer.Argument(parser=_path, help="run folder (causal-lm or text-to-image)")
    ],
    prompts: Annotated[list[str] | None, typer.Argument(help="prompts")] = None,
    file: Annotated[
        Path | None, typer.Option(parser=_path, help="JSONL with `prompt` (or `messages`)")
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="default: the run's; at most the context length")
    ] = None,
    sample: Annotated[bool, typer.Option(help="sample instead of greedy decoding")] = False,
    temperature: Annotated[float, typer.Option(help="with --sample")] = 1.0,
    top_p: Annotated[float, typer.Option(help="nucleus sampling, with --sample")] = 1.0,
    seed: Annotated[
        int, typer.Option(help="with --sample; images: the first picture's (0 to 2³²−1)")
    ] = 0,
    n: Annotated[int, typer.Option("--n", help="text-to-image: pictures per prompt (1 to 64)")] = 8,
    steps: Annotated[int | None, typer.Option(help="text-to-image: default the run's")] = None,
    guidance: Annotated[
        float | None, typer.Option(help="text-to-image: ≥ 1 (1: none); default the run's")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(parser=_path, help="text-to-image: the PNG to write")
    ] = None,
) -> None:
    """Answer prompts with a causal-LM run (one line per prompt, in order; a newline inside an
    answer is written `\\n`), or draw them with a text-to-image run: `tsuika generate RUN
    "a photo of <concept>" --n 8 --seed 0` writes a PNG grid, one row per prompt."""
    from tsuika.api import load
    from tsuika.data.chat import read_prompts
    from tsuika.models.causal import Decoding, context_length

    # Every option and prompt is checked before the run's model is loaded.
    _check_generation_options(max_new_tokens, temperature, top_p, seed, n, steps, guidance)
    if out is not None:
        _writable_folder(out)
    given: list = _checked_prompts(prompts or [])
    if file is not None:
        given += read_prompts(file)
    if not given:
        raise TsuikaError("nothing to generate: give prompts or --file")
    loaded = load(run)
    if loaded.model.model_kind == TEXT_TO_IMAGE:
        _draw(loaded, given, n, seed, steps, guidance, out)
        return
    if max_new_tokens is None:
        max_new_tokens = loaded.task.to_meta().get("max_new_tokens", 32)
    _check_max_new_tokens(max_new_tokens, context_length(loaded.model))
    decoding = Decoding(max_new_tokens, sample, temperature, top_p, seed)
    for answer in loaded.generate(given, decoding):
        typer.echo(answer.replace("\\", "\\\\").replace("\n", "\\n"))  # one line per prompt


MAX_PICTURES = 64
"""`--n`'s cap: a grid row of 64 pictures is already wider than a screen."""
MAX_SEED = 2**32 - 1
"""Seeds are 32-bit, as in diffusers' and the web UIs' samplers (a larger one overflows)."""
NO_CONTEXT_CAP = 8192
"""`--max-new-tokens`'s cap for a model whose config records no context length."""


def _check_generation_options(
    max_new_tokens: int | None,
    temperature: float,
    top_p: float,
    seed: int,
    n: int,
    steps: int | None,
    guidance: float | None,
) -> None:
    """`tsuika generate`'s ranges, each error naming its option. Zero new tokens or pictures
    would be nothing to show, and guidance below 1 is no guidance at all in diffusers
    (`guidance_scale <= 1` turns classifier-free guidance off), so each is refused, not
    quietly read as a default."""
    if max_new_tokens is not None and max_new_tokens < 1:
        raise TsuikaError(
            f"--max-new-tokens {max_new_tokens}: give at least 1 (leave it out for the run's "
            "default)"
        )
    if not math.isfinite(temperature) or temperature <= 0:
        raise TsuikaError(f"--temperature {temperature}: give a finite number above 0")
    if not 0 < top_p <= 1:
        raise TsuikaError(f"--top-p {top_p}: give a number in (0, 1]")
    if not 0 <= seed <= MAX_SEED:
        raise TsuikaError(f"--seed {seed}: give a whole number from 0 to {MAX_SEED}")
    if not 1 <= n <= MAX_PICTURES:
        raise TsuikaError(f"--n {n}: give 1 to {MAX_PICTURES} pictures per prompt")
    if steps is not None and steps < 1:
        raise TsuikaError(f"--steps {steps}: give at least 1 (leave it out for the run's)")
    if guidance is not None and (not math.isfinite(guidance) or guidance < 1):
        raise TsuikaError(
            f"--guidance {guidance}: give a finite number of at least 1 (1: no classifier-free "
            "guidance; leave it out for the run's)"
        )


def _checked_prompts(prompts: list[str]) -> list[str]:
    """Prompts from the command line, each non-empty UTF-8 text."""
    from tsuika.finished_run import text_problem

    for number, prompt in enumerate(prompts, start=1):
        problem = text_problem(prompt)
        if problem:
            raise TsuikaError(f"prompt {number} {problem}")
    return list(prompts)


def _check_max_new_tokens(max_new_tokens: int, context: int | None) -> None:
    """No more new tokens than the model attends to at once."""
    limit = context or NO_CONTEXT_CAP
    if max_new_tokens > limit:
        where = (
            "the model's context length"
            if context
            else "tsuika's cap for a model whose config gives no context length"
        )
        raise TsuikaError(f"--max-new-tokens {max_new_tokens}: at most {limit} ({where})")


def _writable_folder(out: Path) -> None:
    """--out's folder can take a new file, checked before any picture is drawn: the nearest
    folder above it that exists must be a folder in which a file can be created (tried with
    an anonymous temporary file, gone when closed: `os.access` says yes to root even for
    /proc)."""
    existing = next(p for p in [out.parent, *out.parent.parents] if os.path.lexists(p))
    if not existing.is_dir():
        raise TsuikaError(f"--out {out}: {existing} is not a folder; give a path in a folder")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise TsuikaError(
            f"--out {out}: cannot create a file in {existing} ({err.strerror}); give a path "
            "in a folder you can write to"
        ) from None


def _draw(loaded, prompts: list, n: int, seed: int, steps, guidance, out: Path | None) -> None:
    """A text-to-image run's pictures of each prompt as one PNG grid; never overwrites."""
    from tsuika.models.diffusion import image_grid

    if not all(isinstance(prompt, str) for prompt in prompts):
        raise TsuikaError("a text-to-image run draws text prompts, not chat messages")
    if out is not None:
        refuse_link(out)  # refused before anything is drawn, not only when the grid is written
    if out is None:
        folder = loaded.path / "generated"
        refuse_link(folder)
        folder.mkdir(exist_ok=True)
        out = next(
            path
            for i in range(1, 10_000)
            if not os.path.lexists(path := folder / f"grid-{i:03d}-seed{seed}.png")
        )
    elif out.exists():
        raise TsuikaError(f"{out} exists; tsuika never overwrites a file, give another --out")
    elif out.suffix.lower() != ".png":
        raise TsuikaError(f"--out {out}: the grid is written as a .png file")
    # Drawn only now that where the grid goes is settled: a bad --out costs no generation.
    rows = [loaded.images(prompt, n, seed, steps, guidance) for prompt in prompts]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, replace=False) as tmp:
        image_grid(rows).save(tmp, format="PNG")
    typer.echo(f"{len(prompts)} × {n} pictures → {out}")


@app.command()
def export(
    run: Annotated[Path, typer.Argument(parser=_path, help="run folder")],
    format: Annotated[str | None, typer.Option("--format", help="onnx | hf (default: hf)")] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", parser=_path, help="new folder (default: RUN/export-FORMAT)"),
    ] = None,
    int8: Annotated[bool, typer.Option("--int8", help="onnx: also an int8-weights copy")] = False,
    int8_tolerance: Annotated[
        float | None,
        typer.Option(
            "--int8-tolerance",
            help="the most the int8 copy may lose of the run's metric (default 0.01)",
        ),
    ] = None,
    merge: Annotated[
        bool, typer.Option("--merge", help="the same as --format hf (adapters merged)")
    ] = False,
) -> None:
    """Write the run as a new folder that runs without tsuika, with a model card: an ONNX
    graph (`--format onnx`) or a folder plain transformers / timm / torch loads (`hf`)."""
    from tsuika.export import export as export_run

    if format is not None and not format.strip():  # not a quiet "default"
        raise TsuikaError("--format is empty; give onnx or hf (or leave --format out for hf)")
    if merge and format not in (None, "hf"):
        raise TsuikaError(f"--merge writes the hf format; drop it or --format {format}")
    folder = export_run(run, "hf" if format is None else format, out_dir, int8, int8_tolerance)
    out.print(f"exported: {escape(str(folder))}")
    if int8:
        from tsuika.export.int8_check import in_words

        described = json.loads((folder / "export.json").read_text(encoding="utf-8"))
        out.print(escape(in_words(described["int8"]["task"])))


@app.command()
def report(run: Annotated[Path, typer.Argument(parser=_path, help="run folder")]) -> None:
    """Rebuild a run's report.html from its folder (no model is loaded)."""
    from tsuika.report import write_report

    out.print(f"report: {escape(str(write_report(run)))}")


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(parser=_path, help="two or more run folders")],
    out_file: Annotated[
        Path | None,
        typer.Option("--out", parser=_path, help="HTML file (default: beside the first run)"),
    ] = None,
) -> None:
    """Several runs side by side: one table here and one HTML report."""
    from tsuika.report.compare import write_comparison

    path, rows = write_comparison(list(runs), out_file)
    metric = rows[0]["metric_title"]
    table = Table("run", "method", "model", "test", "95% CI", "vs best (paired)", "seconds")
    for row in rows:
        low, high = row["interval"] or (float("nan"), float("nan"))
        table.add_row(
            escape(row["run"]),
            escape(row["method"]),
            escape(row["model"]),
            f"{row['score']:.3f}",
            escape(f"[{low:.3f}, {high:.3f}]"),  # `[nan, nan]` would read as a tag
            escape(row["versus"]),
            f"{row['seconds']:.1f}",
        )
    table.title = escape(f"test {metric}")
    out.print(table)
    out.print(f"comparison: {escape(str(path))}")


@app.command()
def models() -> None:
    """List the bundled models (any local Hugging Face folder works too)."""
    from tsuika.models import available_models

    table = Table("name", "model kind", "description")
    for entry in available_models():
        table.add_row(escape(entry.name), entry.model_kind, escape(entry.description))
    out.print(table)
    out.print(
        "Or give a local folder: model: path/to/hf-model-folder (a diffusers folder for "
        "text-to-image)"
    )


cache_app = typer.Typer(
    no_args_is_help=True, help="The activation store: frozen passes kept across runs."
)
app.add_typer(cache_app, name="cache")


def _store():
    """The user's activation store, or None (said) when `TSUIKA_ACTIVATIONS=off`."""
    from tsuika.config import TrainConfig
    from tsuika.feed.store import activation_store

    store = activation_store(TrainConfig().cache_limit_gb)
    if store is None:
        out.print("the activation store is off (TSUIKA_ACTIVATIONS=off)")
    return store


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


@cache_app.command("ls")
def cache_ls() -> None:
    """List the stored passes, most recently used first."""
    import datetime

    store = _store()
    if store is None:
        return
    entries = store.entries()
    table = Table("key", "model", "split", "up to", "examples", "size", "last used")
    for entry in entries:
        about = entry.about
        used = datetime.datetime.fromtimestamp(entry.used).strftime("%Y-%m-%d %H:%M")
        table.add_row(
            entry.key[:12],
            escape(str(about.get("model", "?"))),
            escape(str(about.get("split", "?"))),
            escape(str(about.get("stage", about.get("boundary", "?")))),
            str(about.get("examples", "?")),
            _size(entry.bytes),
            used,
        )
    out.print(table)
    total = sum(entry.bytes for entry in entries)
    out.print(
        f"{len(entries)} passes, {_size(total)} of {_size(store.limit_bytes)} in "
        f"{escape(str(store.folder))}"
    )


@cache_app.command("clear")
def cache_clear() -> None:
    """Remove every stored pass (later runs compute them again)."""
    store = _store()
    if store is None:
        return
    freed = store.clear()
    out.print(f"removed the stored passes in {escape(str(store.folder))}: {_size(freed)} freed")


@app.command()
def demo(
    output: Annotated[str, typer.Option(parser=_path_text, help="parent folder of runs")] = "runs",
    quiet: bool = False,
    images: Annotated[bool, typer.Option(help="EfficientNet-Lite0 on Fashion-MNIST")] = False,
) -> None:
    """Transfer learning on a bundled model and data (text, or --images), with baselines."""
    from tsuika.api import train as train_api

    if images:
        banner = (
            "efficientnet-lite0 (ImageNet) → Fashion-MNIST, 50 images per class, transfer "
            "learning vs the majority class and logistic regression on pixels"
        )
        settings = dict(model="efficientnet-lite0", data={"train": "bundled:fashion", "k": 50})
    else:
        banner = (
            "minilm-l6 → movie-review polarity, 256 examples per class, transfer "
            "learning vs the majority class and TF-IDF + logistic regression"
        )
        settings = dict(model="minilm-l6", data={"train": "bundled:reviews", "k": 256})
    out.print(f"[bold]tsuika demo{' --images' if images else ''}[/bold]: {banner}")
    with reporting_interrupts():
        run = train_api(method="transfer", output=output, progress=not quiet, **settings)
    print_summary(run.summary)


ARGV: list[str] = []


LAUNCH_OPTIONS = ("--processes", "--machines", "--machine-rank", "--main-address")


def _worker_arguments(args: list[str]) -> list[str]:
    """The train arguments minus the launch's own (`--processes N`, `--machines=M`, ...): each
    worker is one process of the launch."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in LAUNCH_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in LAUNCH_OPTIONS)):
            kept.append(arg)
    return kept


@contextlib.contextmanager
def reporting_interrupts() -> Iterator[None]:
    """Ctrl-C inside a command: typer would exit 130 silently, so say how to resume here."""
    try:
        yield
    except KeyboardInterrupt as err:
        raise typer.Exit(_interrupted(err)) from None


def _interrupted(err: KeyboardInterrupt) -> int:
    """Ctrl-C: say where the run's checkpoint is and how to continue; exit code 130."""
    message = "interrupted"
    if isinstance(err, RunInterrupted):
        path = escape(str(err.path))
        message += (
            f": the run folder {path} keeps what was checkpointed; continue with "
            f"`tsuika train --resume {path}`"
        )
    Console(stderr=True, soft_wrap=True).print(message, highlight=False)
    return 130


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for user mistakes, with a one-line message)."""
    ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=ARGV, standalone_mode=False)
        # Without standalone mode click returns (not raises) the code of a `typer.Exit`.
        if isinstance(code, int):
            return code
    except TsuikaError as err:
        Console(stderr=True, soft_wrap=True).print(
            f"[bold red]error:[/bold red] {escape(str(err))}", highlight=False
        )
        return err.exit_code
    except typer.Exit as err:
        return err.exit_code
    except KeyboardInterrupt as err:
        return _interrupted(err)
    except typer.Abort:
        return 1
    except Exception as err:
        # Usage errors (typer bundles its own click): show the message, not a traceback.
        if callable(getattr(err, "show", None)) and isinstance(
            getattr(err, "exit_code", None), int
        ):
            err.show()
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
