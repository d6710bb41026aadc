"""`tsuika inspect`: layer groups with parameter counts, and which train at what rate."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from tsuika.config import Config
from tsuika.methods import method_class
from tsuika.models import model_for
from tsuika.models.heads import Head
from tsuika.tasks import model_kind_for, task_for


def describe(config: Config) -> Table:
    """The model's groups shallow → deep; under `config`: trains?, rate, and the epoch a
    group unfreezes (gradual unfreezing). No data is read: the head here has two outputs."""
    task = task_for(config)
    model = model_for(config, lambda width: Head(width, 2), model_kind=model_kind_for(config, task))
    method = method_class(config.method)(config, task)
    method.prepare(model)
    rates = {group["name"]: group["lr"] for group in method.param_groups(model)}
    unfreeze_at = {}
    for epoch in range(1, config.train.epochs + 1):
        for event in method.on_epoch_start(model, epoch):
            unfreeze_at.setdefault(event.removeprefix("unfroze "), epoch)
    boundary = method.cache_boundary(model)
    # rich markup: a model folder such as `m[/b]` must not be read as a tag
    table = Table(title=escape(f"{config.model} under method `{config.method}`"))
    for column in ("#", "group", "parameters", "trains", "lr", "note"):
        table.add_column(column, justify="right" if column in ("#", "parameters", "lr") else "left")
    for group in model.layer_groups():
        trains = group.name in rates or group.trainable
        rate = rates.get(group.name, rates.get("adapters"))
        trainable = sum(p.numel() for p in group.parameters() if p.requires_grad)
        note = []
        if trains and 0 < trainable < group.size:
            note.append(f"adapters: {trainable:,} trainable")
        if group.index < boundary:
            note.append("cached (frozen prefix)")
        if group.name in unfreeze_at and unfreeze_at[group.name] > 1:
            note.append(f"unfreezes at epoch {unfreeze_at[group.name]}")
        table.add_row(
            str(group.index),
            escape(group.name),
            f"{group.size:,}",
            "yes" if trains else "no",
            f"{rate:.2e}" if trains and rate is not None else "",
            ", ".join(note),
        )
    return table
