"""`report.html`: what happened in a run, as pictures — rebuilt from the run folder alone
(`tsuika report RUN`), self-contained (no script, no network), and `tsuika compare` for
several runs."""

from __future__ import annotations

from pathlib import Path

from tsuika.files import write_atomic
from tsuika.report import sections
from tsuika.report.files import PREDICTIONS, REPORT, RunFiles, read_run
from tsuika.report.html import page
from tsuika.report.task_sections import task_sections


def build_report(run: RunFiles) -> str:
    summary = run.summary
    data = summary.get("data", {})
    subtitle = (
        f"{summary['model']} · {summary['method']} · {summary['task']} · train "
        f"{data.get('train')} / validation {data.get('validation')} / test {data.get('test')} "
        f"· {run.path}"
    )
    parts = [
        sections.verdicts(run),
        *sections.plan(run),
        sections.versus_baselines(run),
        *sections.distillation(run),
        *sections.concept(run),
        sections.learning_curves(run),
        *sections.forgetting(run),
        sections.schedule(run),
        sections.trained(run),
        *task_sections(run),
        sections.examples(run),
        sections.data_checks(run),
        sections.cost(run),
    ]
    return page(f"tsuika run {run.name}", subtitle, parts)


def write_report(path: str | Path) -> Path:
    """Build `<run>/report.html` from the run's files (replacing an earlier one)."""
    run = read_run(path)
    target = run.path / REPORT
    write_atomic(target, build_report(run))
    return target


__all__ = ["PREDICTIONS", "REPORT", "build_report", "read_run", "write_report"]
