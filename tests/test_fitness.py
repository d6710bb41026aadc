"""Fitness of the architecture that no linter knows (STYLE.md 12): what a task or a method
*is* is asked of the part, not worked out by comparing its name elsewhere (issue 32).

The comparisons that exist today are listed with their count per module — a ratchet: a new
one fails this test (ask the part: a class attribute or method on the task or method), and
one removed must be taken off the list, so the list only shrinks as issue 32 goes on.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import tsuika
from tsuika.methods import METHODS
from tsuika.tasks import TASKS

SOURCE = Path(tsuika.__file__).parent
PART_NAMES = (set(METHODS) | set(TASKS) | {"encoder"}) - {"auto"}
"""Task and method names, and the model kinds that share them (`encoder`, `causal-lm`,
`text-to-image`). `auto` is left out: it is also the value of many unrelated settings."""

KNOWN = {
    "advice/checks.py": 1,
    "advice/commands.py": 1,
    "advice/forgetting.py": 2,
    "cli.py": 1,
    "evaluate/baselines.py": 1,
    "export/graph.py": 1,
    "export/hf_folder.py": 1,
    "finished_run.py": 4,
    "methods/base.py": 1,
    "methods/concepts.py": 2,
    "methods/finetune.py": 1,
    "methods/prompt_tuning.py": 1,
    "methods/recipe.py": 3,
    "models/__init__.py": 6,
    "plan.py": 2,
    "tasks/base.py": 1,
}
"""Comparisons of a part's name outside its own module, as of 2026-12-07."""


def _own_module(name: str) -> str:
    """Where a part is defined: a comparison with its own name there is the part itself."""
    part = METHODS.get(name) or TASKS.get(name)
    return part.__module__.removeprefix("tsuika.").replace(".", "/") + ".py" if part else ""


def name_comparisons(text: str, module: str) -> int:
    count = 0
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        constants = [e for side in sides for e in [side, *getattr(side, "elts", [])]]
        names = {c.value for c in constants if isinstance(c, ast.Constant)} & PART_NAMES
        count += any(_own_module(name) != module for name in names)
    return count


def test_no_new_comparison_of_a_part_name_outside_its_module() -> None:
    found = Counter()
    for path in sorted(SOURCE.rglob("*.py")):
        module = path.relative_to(SOURCE).as_posix()
        if count := name_comparisons(path.read_text(encoding="utf-8"), module):
            found[module] = count
    assert dict(found) == KNOWN, (
        "a task's or method's name is compared outside its own module: ask the part instead "
        "(a class attribute or method); if you removed one, lower its count in KNOWN"
    )


def test_the_rule_sees_a_comparison_and_allows_a_part_its_own_name() -> None:
    probe = "if config.method == 'distill' or task.name in ('regression', 'x'):\n    pass\n"
    assert name_comparisons(probe, "api.py") == 2
    assert name_comparisons("ok = name == 'distill'\n", _own_module("distill")) == 0
