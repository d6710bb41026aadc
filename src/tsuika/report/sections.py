"""The sections every run's report has, whatever its task: verdicts, the baselines, learning
curves, the learning-rate plan, what trained, the test examples to look at, time and memory.
Task-specific sections come from `tsuika.report.task_sections`."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from tsuika.model_kinds import IMAGE_ENCODER, recorded_model_kind
from tsuika.report import charts
from tsuika.report.files import RunFiles
from tsuika.report.html import Raw, Section, chart, percent, table, text

SHOWN_EXAMPLES = 10


def verdicts(run: RunFiles) -> Section:
    items = []
    for verdict in run.summary.get("verdicts", {}).values():
        words = verdict.get("text", "")
        kind = "neutral"
        if words.split(":")[0].isupper():  # NEGATIVE TRANSFER: …, OVERFITTING: …
            kind = "bad"
        elif "not a clear gain" in words:
            kind = "warn"
        elif " beats " in words:
            kind = "good"
        items.append(f'<p class="verdict {kind}">{text(words)}</p>')
    return Section("verdicts", "Verdicts", "".join(items) or "<p>No verdicts recorded.</p>")


def data_checks(run: RunFiles) -> Section:
    """The checks that ran before training (`tsuika check` runs the rest): what was found,
    where, and the fix."""
    findings = run.summary.get("checks", [])
    flagged = [f for f in findings if f["verdict"] != "ok"]
    if not findings:
        body = "<p>No data checks recorded.</p>"
    elif not flagged:
        body = (
            f"<p>All {len(findings)} checks that read the data alone passed (class balance, "
            "empty and extreme inputs, exact duplicates, leakage between splits). "
            "<code>tsuika check</code> also looks for near duplicates and label errors.</p>"
        )
    else:
        rows = [
            [f["verdict"].upper(), f["check"], f["text"], f.get("fix", ""), _where(f)]
            for f in flagged
        ]
        body = table(["verdict", "check", "finding", "fix", "for example"], rows)
    return Section("checks", "Data checks", body)


def forgetting(run: RunFiles) -> list[Section]:
    """With `data.retain`: what the model could do before, every epoch, and the verdict."""
    found = run.summary.get("forgetting")
    if not found:
        return []
    metric = run.summary["selection"]["metric"]
    svg = charts.forgetting(run.history, metric, found)
    low, high = found["interval"]
    caption = (
        f"{found['examples']} examples of {found['data']}: {found['metric']} "
        f"{found['pretrained']:.3f} before training, {found['kept']:.3f} for the kept model "
        f"(change {found['change']:+.3f}, 95 % paired-bootstrap interval {low:+.3f} to "
        f"{high:+.3f}): {found['verdict']}."
    )
    return [Section("forgetting", "Forgetting", chart("forgetting", svg, caption))]


def plan(run: RunFiles) -> list[Section]:
    """A run `tsuika plan` chose: the strategies it tried and why this one won."""
    chosen = run.summary.get("plan")
    if not chosen:
        return []
    body = f"<p>{text(chosen['explanation'])}</p>"
    trials = chosen.get("trials", [])
    if trials:
        rows = [trial_row(t) for t in trials]
        body += table(["strategy", "outcome", "best validation", "epochs", "steps", "s"], rows)
    return [Section("plan", "Why this strategy", body)]


def trial_row(trial: dict) -> list[str]:
    """One trial of a plan as table cells (the report's table and `tsuika plan`'s)."""
    score = "" if trial["score"] is None else f"{trial['score']:.3f}"
    cells = [trial["state"], score, str(trial["epochs"]), str(trial["steps"])]
    return [trial["strategy"], *cells, f"{trial['seconds']:.1f}"]


def _where(finding: dict) -> str:
    """The first example of a finding in a few words: split and line (or file)."""
    if not finding.get("examples"):
        return ""
    first = finding["examples"][0]
    rows = first if isinstance(first, list) else [first]
    return "; ".join(f"{r['split']} {r.get('line', r.get('file', ''))}".strip() for r in rows)


def versus_baselines(run: RunFiles) -> Section:
    summary, task = run.summary, run.task
    metric = summary["selection"]["metric"]
    # Runs from before per-baseline gains have no interval to draw: they are left out.
    baselines = {n: b for n, b in summary.get("baselines", {}).items() if "gain" in b}
    if not baselines:
        return Section("baselines", "Against the baselines", "<p>No baselines ran.</p>")
    svg = charts.versus_baselines(
        list(baselines),
        [b[metric] for b in baselines.values()],
        [b["gain"] for b in baselines.values()],
        run.task.metric_title(metric),
        summary["method"],
        summary["test"][metric],
        task.gain_scale,
        task.gain_unit,
    )
    shown = [m for m in task.shown if m in summary["test"]]
    rows = [[summary["method"], "the adapted model", *(summary["test"][m] for m in shown), "", ""]]
    for name, values in baselines.items():
        rows.append(
            [
                name,
                values["title"],
                *(values.get(m, "") for m in shown),
                task.gain_interval(values["gain"]),
                f"{values.get('seconds', 0.0):.2f}",
            ]
        )
    headers = [
        "",
        "what",
        *(run.task.metric_title(m) for m in shown),
        f"gain of the run ({task.gain_unit}, 95% CI)",
        "seconds",
    ]
    numeric = [False, False, *([True] * len(shown)), True, True]
    versus = summary.get("gain", {}).get("baseline")
    note = (
        f"<p class='note'>Judged against the strongest baseline, <b>{text(versus)}</b>; "
        "intervals are paired bootstrap 95% intervals over test examples.</p>"
        if versus
        else ""
    )
    tested = summary.get("data", {}).get("test")
    body = chart("baselines", svg, f"test {run.task.metric_title(metric)}, n={tested}")
    return Section(
        "baselines",
        "Against the baselines",
        body + table(headers, rows, numeric, highlight=0) + note,
    )


def learning_curves(run: RunFiles) -> Section:
    training = run.summary.get("training", {})
    metric = run.summary["selection"]["metric"]
    if not run.history:
        return Section("curves", "Learning curves", "<p>No epochs recorded.</p>")
    svg = charts.learning_curves(
        run.history, metric, training.get("best_epoch", 0), training.get("stopped_early", False)
    )
    caption = (
        f"best validation {run.task.metric_title(metric)} at epoch {training.get('best_epoch')} of "
        f"{training.get('epochs_run')} (its weights were kept)"
    )
    return Section("curves", "Learning curves", chart("curves", svg, caption))


def schedule(run: RunFiles) -> Section:
    plan = run.summary.get("training", {}).get("schedule")
    if not plan or not plan.get("rates"):
        return Section("schedule", "Learning rate", "<p>No schedule recorded.</p>")
    steps = run.summary["training"].get("optimizer_steps", 0)
    svg = charts.lr_schedule(plan, steps)
    caption = (
        f"{plan['kind']} schedule, {plan['warmup_steps']} warmup steps of "
        f"{plan['total_steps']} planned; {steps} taken"
    )
    return Section("schedule", "Learning rate", chart("schedule", svg, caption))


def trained(run: RunFiles) -> Section:
    parameters = run.summary.get("parameters", {})
    total = parameters.get("total", 0) or 1
    share = parameters.get("trained", 0) / total
    rows = [
        [
            g["name"],
            f"{g['parameters']:,}",
            "yes" if g["trained"] else "frozen",
            f"{g['lr']:.2e}" if g.get("lr") is not None else "",
        ]
        for g in parameters.get("groups", [])
    ]
    body = (
        f"<p>{parameters.get('trained', 0):,} of {total:,} parameters trained "
        f"(<b>{percent(share)}</b>), method <b>{text(run.summary['method'])}</b>.</p>"
        + chosen_because(run.summary)
        + table(
            ["layer group", "parameters", "trained", "base rate"], rows, [False, True, False, True]
        )
    )
    return Section("trained", "What trained", body)


def _input_cell(record: dict, image: bool) -> object:
    value = str(record.get("input", ""))
    if image:
        thumb = thumbnail(Path(value))
        name = text(Path(value).name)
        return Raw(f'<img class="thumb" alt="{name}" src="{thumb}"> {name}' if thumb else name)
    return value if len(value) <= 300 else value[:300] + " …"


def thumbnail(path: Path, size: int = 56) -> str | None:
    """A small PNG of an image file as a `data:` URI (inside the page, no file link), or None
    when the file is gone or unreadable."""
    from PIL import Image

    from tsuika.data.images import decode

    try:
        pixels = decode(path, 40_000_000)
    except ValueError:
        return None
    image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _shown(value: object) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def examples(run: RunFiles) -> Section:
    """The test examples to read first: those the model is most confidently wrong about
    (highest loss among the wrong ones), and, for text, the slowest (most tokens)."""
    records = run.records
    if not records:
        return Section("examples", "Test examples", "<p>No predictions recorded.</p>")
    image = recorded_model_kind(run.summary) == IMAGE_ENCODER
    confident = "confidence" in records[0]
    wrong = [r for r in records if r["score"] < 1] if confident else list(records)
    worst = sorted(wrong, key=lambda r: -r["loss"])[:SHOWN_EXAMPLES]
    headers = ["#", "input", "truth", "predicted", *(["confidence"] if confident else []), "loss"]
    rows = [
        [
            r["index"],
            _input_cell(r, image),
            _shown(r["truth"]),
            _shown(r["predicted"]),
            *([r.get("confidence", "")] if confident else []),
            r["loss"],
        ]
        for r in worst
    ]
    numeric = [True, False, False, False, *([True] if confident else []), True]
    title = "Most confidently wrong" if confident else "Largest errors"
    body = f"<h3>{title}</h3>" + (table(headers, rows, numeric) if rows else "<p>None.</p>")
    if not image:
        slow = sorted(records, key=lambda r: -r.get("tokens", 0))[:SHOWN_EXAMPLES]
        rows = [
            [
                r["index"],
                r.get("tokens", ""),
                _input_cell(r, False),
                _shown(r["truth"]),
                _shown(r["predicted"]),
            ]
            for r in slow
        ]
        body += (
            "<h3>Slowest (most tokens)</h3><p class='note'>Cost grows with length; very long "
            "inputs are truncated at <code>train.max_length</code>.</p>"
            + table(
                ["#", "tokens", "input", "truth", "predicted"],
                rows,
                [True, True, False, False, False],
            )
        )
    return Section("examples", "Test examples", body)


def cost(run: RunFiles) -> Section:
    timings = run.summary.get("timings", {})
    total = timings.get("total") or 0.0
    rows = [
        [name, f"{seconds:.1f}", f"{100 * seconds / total:.1f} %" if total else ""]
        for name, seconds in timings.items()
        if isinstance(seconds, int | float)
    ]
    memory = run.summary.get("memory", {})
    lines = [f"peak resident memory {memory['peak_rss_mb']:.0f} MB"] if memory else []
    if "peak_cuda_mb" in memory:
        lines.append(f"peak GPU memory {memory['peak_cuda_mb']:.0f} MB")
    disk = run.summary.get("disk", {})
    if "model_bytes" in disk:
        lines.append(f"saved model {disk['model_bytes'] / 2**20:.2f} MB")
    if "adapter_bytes" in disk:
        lines.append(f"of which the PEFT adapter {disk['adapter_bytes'] / 2**20:.2f} MB")
    throughput = run.summary.get("throughput", {})
    if "tokens_per_second" in throughput:
        lines.append(f"training {throughput['tokens_per_second']:.0f} tokens/s")
    body = table(["part", "seconds", "share of the run"], rows, [False, True, True])
    if lines:
        body += (
            f"<p>{text('; '.join(lines))}.</p><p class='note'>Memory: the process's peak "
            "while the run went; tokens/s: every input token of the training batches over "
            "the fit time, validation passes included.</p>"
        )
    return Section("cost", "Time and memory", body)


def distillation(run: RunFiles) -> list[Section]:
    """A distilled run: teacher and student side by side, measured on this machine."""
    kd = run.summary.get("distillation")
    if not kd:
        return []
    metric = kd["metric"]
    rows = [
        [
            side,
            kd[side][metric],
            kd[side]["blocks"] or "—",
            f"{kd[side]['parameters'] / 1e6:.2f}M",
            f"{kd[side]['model_bytes'] / 2**20:.1f}",
            f"{kd[side]['latency_batch1_ms']:.1f}",
            f"{kd[side]['latency_batch64_ms']:.0f}",
        ]
        for side in ("teacher", "student")
    ]
    headers = [
        "",
        run.task.metric_title(metric),
        "blocks",
        "parameters",
        "MB",
        "ms at batch 1",
        "ms at batch 64",
    ]
    body = table(headers, rows, [False] + [True] * 6, highlight=1)
    retained = kd.get("retained_percent")
    words = []
    if retained is not None:
        words.append(
            f"the student keeps {retained:.1f} % of the teacher's {run.task.metric_title(metric)}"
        )
    words.append(
        f"runs {kd['speedup_batch1']:.2f}× faster at batch 1 and {kd['speedup_batch64']:.2f}× "
        f"at batch 64, at {100 * kd['size_ratio']:.0f} % of the size"
    )
    if kd.get("unlabelled"):
        words.append(f"it learned from {kd['unlabelled']} inputs without labels too")
    how = "computed once" if kd.get("teacher_cached") else "computed on every augmented batch"
    body += (
        f"<p>{text(', and '.join(words))}.</p><p class='note'>Soft targets at temperature "
        f"{kd['temperature']:g}, weight alpha {kd['alpha']:g}; the teacher's outputs were "
        f"{how}. Latency: median of one forward pass on test inputs, this machine, "
        'preprocessing excluded. The baseline "the same student trained on the labels '
        'alone" says what the teacher added.</p>'
    )
    return [Section("distillation", "Teacher and student", body)]


def concept(run: RunFiles) -> list[Section]:
    """A text-to-image concept run: fidelity and every known class, base against adapted."""
    found = run.summary.get("concept")
    if not found:
        return []
    pairs = [("the new concept (fidelity)", found["base_fidelity"], found["fidelity"])]
    pairs += [(name, before, after) for name, (before, after) in found["per_class"].items()]
    pairs.append(
        ("known classes (prior preservation)", found["base_prior_preservation"],
         found["prior_preservation"])
    )  # fmt: skip
    rows = [[name, percent(before), percent(after)] for name, before, after in pairs]
    body = table(["judged as", "base model", "after"], rows, [False, True, True], highlight=0)
    body += (
        f"<p class='note'>Share of generations an independent classifier (trained on real "
        f"images of every class) assigns to the class asked for: "
        f"{found['images_per_prompt']} seeds per prompt, the same seeds before and after. "
        f"Concept prompt: {text(found['prompt'])}.</p>"
    )
    return [Section("concept", "The new concept and what the model knew", body)]


def chosen_because(summary: dict) -> str:
    """Why `method: auto` chose the method (nothing when the user named one)."""
    recipe = summary.get("recipe")
    if not recipe:
        return ""
    return f"<p>Chosen by <code>method: auto</code>: {text(recipe['reason'])}.</p>"
