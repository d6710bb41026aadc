"""Tasks and methods from other installed packages, found through Python entry points as
pytest finds its plugins: a distribution that declares

    [project.entry-points."tsuika.methods"]
    bitfit = "tsuika_bitfit:BitFit"

adds the method `bitfit` to `tsuika.methods.METHODS` (group `tsuika.tasks`: a task to
`tsuika.tasks.TASKS`), so the command line, the config, the report and the contract tests
offer it as they offer a built-in one. `examples/plugin/` is such a package.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

from tsuika.console import warn

Part = TypeVar("Part", bound=type)


def registry(
    group: str, built_ins: dict[str, Part], base: type
) -> tuple[dict[str, Part], dict[str, str]]:
    """The built-in parts, in their order, then those that installed distributions advertise
    under the entry-point `group` (sorted by name): returns (registry, unusable), where
    `unusable` maps the name of each plugin that could not be loaded to why.

    A plugin never breaks a command that does not use it: one whose module fails to import,
    whose class is not a subclass of `base`, or whose class's `name` is not its entry point's
    name is left out with a warning, and asking for it by name gives the same line as an
    error (`unusable`). A built-in name keeps its built-in part (a warning names the
    distribution): configs and saved runs that say `finetune` must go on meaning tsuika's
    finetune whatever else is installed, and that is also why a plugin is not even imported
    then. Of two plugins of one name, the distribution first by name wins, likewise.
    """
    parts = dict(built_ins)
    owners = {name: "tsuika" for name in built_ins}
    unusable: dict[str, str] = {}
    kind = base.__name__.lower()
    for entry in sorted(entry_points(group=group), key=lambda e: (e.name, _distribution(e))):
        where = (
            f"plugin {kind} `{entry.name}` (distribution {_distribution(entry)}, entry point "
            f"{entry.value})"
        )
        if entry.name in owners:
            warn(
                f"{where} is left out: `{entry.name}` is already the {kind} of "
                f"{owners[entry.name]}; rename the entry point in group {group}"
            )
            continue
        owners[entry.name] = _distribution(entry)  # the name is taken even if it fails
        part, problem = _load(entry, base)
        if problem:
            unusable[entry.name] = f"{where} {problem}; fix or uninstall {_project(entry)}"
            warn(f"{unusable[entry.name]} (left out)")
            continue
        parts[entry.name] = part
    return parts, unusable


def _load(entry: EntryPoint, base: type) -> tuple[Any, str | None]:
    """(the class `entry` names, None), or (None, what is wrong with it)."""
    try:
        part = entry.load()
    except Exception as error:  # a third-party import can raise anything; say what it raised
        return None, f"cannot be imported: {type(error).__name__}: {error}"
    if not (isinstance(part, type) and issubclass(part, base)):
        return None, f"is not a subclass of {base.__module__}.{base.__name__}"
    if getattr(part, "name", None) != entry.name:
        # Configs, summaries and saved runs name a part by this attribute: they must agree.
        name = getattr(part, "name", None)
        return None, f"has class attribute name = {name!r}, not {entry.name!r}"
    return part, None


def _project(entry: EntryPoint) -> str:
    return entry.dist.name if entry.dist is not None else "its distribution"


def _distribution(entry: EntryPoint) -> str:
    dist = entry.dist
    return f"{dist.name} {dist.version}" if dist is not None else "unknown"
