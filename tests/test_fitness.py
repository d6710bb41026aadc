"""Fitness of the architecture that no linter knows (STYLE.md 12): what a task or a method
*is* is asked of the part, not worked out by comparing its name elsewhere (issue 32).

None is left (the last seven went on 2026-12-07: the recipe, plan, rank, the data checks,
forgetting and the baselines now read what the task or method declares — `Task.recipe`,
`plannable`, `rankable`, `has_classes`, `forgetting`, `Method.extra_baselines`); a new one
fails this test.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import tsuika
from tsuika.methods import METHODS
from tsuika.model_kinds import MODEL_KINDS
from tsuika.tasks import TASKS

SOURCE = Path(tsuika.__file__).parent
PART_NAMES = (set(METHODS) | set(TASKS) | set(MODEL_KINDS)) - {"auto"}
"""Task and method names, and the model kinds (`tsuika.model_kinds`, whose constants the
rest of tsuika compares with). `auto` is left out: it is also the value of many unrelated
settings."""


def _own_module(name: str) -> str:
    """Where a part is defined: a comparison with its own name there is the part itself."""
    part = METHODS.get(name) or TASKS.get(name)
    if part is None and name in MODEL_KINDS:
        return "model_kinds.py"
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


def test_no_comparison_of_a_part_name_outside_its_module() -> None:
    found = Counter()
    for path in sorted(SOURCE.rglob("*.py")):
        module = path.relative_to(SOURCE).as_posix()
        if count := name_comparisons(path.read_text(encoding="utf-8"), module):
            found[module] = count
    assert not found, (
        f"a task's or method's name is compared outside its own module ({dict(found)}): ask "
        "the part instead (a class attribute or method it declares)"
    )


def test_the_rule_sees_a_comparison_and_allows_a_part_its_own_name() -> None:
    probe = "if config.method == 'distill' or task.name in ('regression', 'x'):\n    pass\n"
    assert name_comparisons(probe, "api.py") == 2
    assert name_comparisons("ok = name == 'distill'\n", _own_module("distill")) == 0


OLD_KIND_WORDS = ("modality", "modalities", "input_kind", "family", "family_kinds")
"""The words tsuika had for the kind of model before `model_kind` (issue 32, item 6). A run
written then still says `family` or `modality` in its files: `tsuika.model_kinds.
recorded_model_kind` reads those keys as strings, and no identifier carries them."""


def identifiers(text: str) -> set[str]:
    """Every name a module defines or uses: variables, attributes, functions, classes,
    parameters, keyword arguments, imports (and the fields of a TypedDict)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.add(node.name)
        elif isinstance(node, ast.arg | ast.keyword) and node.arg:
            found.add(node.arg)
        elif isinstance(node, ast.alias):
            found.update(name for name in (node.name, node.asname) if name)
    return found


def old_kind_words(text: str) -> set[str]:
    """The identifiers of `text` that carry one of `OLD_KIND_WORDS` as a word of their own
    (`modality_of`, `_folder_modality`, `FAMILY_KINDS`; not `STAGED_FAMILIES`)."""
    words = [f"_{word}_" for word in OLD_KIND_WORDS]
    return {name for name in identifiers(text) if any(w in f"_{name.lower()}_" for w in words)}


def test_the_kind_of_model_has_one_word() -> None:
    found = {}
    for path in sorted(SOURCE.rglob("*.py")):
        if names := old_kind_words(path.read_text(encoding="utf-8")):
            found[path.relative_to(SOURCE).as_posix()] = sorted(names)
    assert found == {}, (
        "the kind of model is `model_kind`, in the vocabulary of tsuika.model_kinds; an older "
        "run's words are read only by tsuika.model_kinds.recorded_model_kind"
    )


def test_the_one_word_rule_sees_the_old_words() -> None:
    probe = (
        "from tsuika.models import modality_of\n"
        "FAMILY_KINDS = {}\n"
        "def read(task, modality, family=None):\n"
        "    return task.input_kind(modality), task.modalities, STAGED_FAMILIES, spec['family']\n"
    )
    assert old_kind_words(probe) == {
        "modality_of",
        "FAMILY_KINDS",
        "modality",
        "family",
        "input_kind",
        "modalities",
    }
