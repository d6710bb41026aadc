"""Tasks: what is learned and how it is judged; each is one module, registered here, or by
another installed package under the entry-point group `tsuika.tasks` (`tsuika.plugins`)."""

from __future__ import annotations

from tsuika.config import Config
from tsuika.errors import TsuikaError
from tsuika.plugins import registry
from tsuika.tasks.base import Task
from tsuika.tasks.causal_lm import CausalLM
from tsuika.tasks.classify import Classify, MultiTask
from tsuika.tasks.regression import Regression
from tsuika.tasks.text_to_image import TextToImage

BUILT_IN: dict[str, type[Task]] = {
    "classify": Classify,
    "multi-task": MultiTask,
    "regression": Regression,
    "causal-lm": CausalLM,
    "text-to-image": TextToImage,
}
TASKS, UNUSABLE = registry("tsuika.tasks", BUILT_IN, Task)
"""Every task by name: the built-in ones, then the plugins'; `UNUSABLE`: why each plugin
that could not be loaded is left out."""


def task_name(config: Config) -> str:
    """The configured task; `auto` is classify, or multi-task for several label columns."""
    if config.task != "auto":
        return config.task
    column = config.data.label_column
    return "multi-task" if isinstance(column, list) and len(column) > 1 else "classify"


def task_for(config: Config, modality: str | None = None) -> Task:
    """A new task for `config`; an unknown name or a model kind the task cannot adapt is an
    error naming what fits."""
    name = task_name(config)
    if name in UNUSABLE:
        raise TsuikaError(UNUSABLE[name])
    if name not in TASKS:
        raise TsuikaError(f"unknown task `{name}`; tasks are {', '.join(TASKS)} (or auto)")
    cls = TASKS[name]
    if modality is not None and modality not in cls.modalities:
        raise TsuikaError(
            f"task `{name}` adapts {' or '.join(sorted(cls.modalities))} models, and "
            f"`{config.model}` is a {modality} model"
        )
    return cls.from_config(config)


def task_from_meta(meta: dict) -> Task:
    return TASKS[meta["name"]].from_meta(meta)


__all__ = [
    "TASKS",
    "CausalLM",
    "Classify",
    "MultiTask",
    "Regression",
    "Task",
    "TextToImage",
    "task_for",
    "task_from_meta",
]
