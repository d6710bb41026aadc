"""Tasks: what is learned and how it is judged; each is one module, registered here, or by
another installed package under the entry-point group `tsuika.tasks` (`tsuika.plugins`)."""

from __future__ import annotations

from tsuika.config import Config
from tsuika.errors import TsuikaError
from tsuika.model_kinds import first_kind, kinds_in_words
from tsuika.models import model_kinds_of
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


def task_class(config: Config) -> type[Task]:
    """The configured task's class; an unknown name is an error naming the tasks."""
    name = task_name(config)
    if name in UNUSABLE:
        raise TsuikaError(UNUSABLE[name])
    if name not in TASKS:
        raise TsuikaError(f"unknown task `{name}`; tasks are {', '.join(TASKS)} (or auto)")
    return TASKS[name]


def task_for(config: Config) -> Task:
    """A new task for `config`; an unknown name is an error naming what fits."""
    return task_class(config).from_config(config)


def model_kind_for(config: Config, task: Task | type[Task] | None = None) -> str:
    """The kind of model (`tsuika.model_kinds`) `config.model` is adapted as for `task` (None:
    the configured one): the first of the task's kinds that the model can be. An unknown
    model, an unknown task, or a model of a kind the task cannot adapt is an error naming
    what fits."""
    kinds = model_kinds_of(config.model)  # an unknown model is named before the task
    task = task if task is not None else task_class(config)
    fitting = first_kind(kinds & task.model_kinds)
    if fitting is None:
        raise TsuikaError(
            f"task `{task.name}` adapts {kinds_in_words(task.model_kinds)} models, and "
            f"`{config.model}` is {kinds_in_words(kinds, article=True)} model"
        )
    return fitting


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
    "model_kind_for",
    "task_class",
    "task_for",
    "task_from_meta",
]
