"""The layers of docs/architecture.md hold, and the import-linter contracts that enforce them really
fail when a lower layer imports a higher one, or a task (method) imports another."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(source_root: Path, config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(source_root)}
    return subprocess.run(
        [str(LINT), "--config", str(config), "--no-cache"],
        capture_output=True,
        text=True,
        env=env,
        cwd=source_root.parent,
        timeout=120,
    )


def test_the_contracts_hold() -> None:
    done = _lint(ROOT / "src", ROOT / "pyproject.toml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "back_edge", "contract"),
    [
        ("data/text.py", "import tsuika.train.loop", "api → cli"),  # the layers contract
        ("finished_run.py", "import tsuika.train.phase", "never imports training code"),
        ("tasks/regression.py", "import tsuika.tasks.classify", "tasks know nothing"),
        ("methods/transfer.py", "import tsuika.methods.adapters", "methods know nothing"),
    ],
)
def test_a_back_edge_breaks_the_build(
    tmp_path: Path, module: str, back_edge: str, contract: str
) -> None:
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "src", copy, ignore=shutil.ignore_patterns("*.egg-info"))
    target = copy / "tsuika" / module
    target.write_text(target.read_text() + f"\n{back_edge}  # a back-edge\n")
    done = _lint(copy, ROOT / "pyproject.toml")
    assert done.returncode == 1, done.stdout
    broken = [line for line in done.stdout.splitlines() if " BROKEN" in line]
    assert any(contract in line for line in broken), done.stdout
