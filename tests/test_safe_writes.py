"""Nothing is written through a symbolic link, and every write goes through `tsuika.files`
(issue 31, items 1-3 and the `--out` link cases of item 6).

Each attack plants a link to a `decoy` file (or folder) outside the run folder; the decoy's
bytes must not change and nothing may appear where the link points.
"""

from __future__ import annotations

import ast
import hashlib
import shutil
from pathlib import Path

import pytest

import tsuika
from tsuika.cli import main
from tsuika.errors import TsuikaError
from tsuika.files import append_lines, atomic_file, fresh_folder, open_new, write_atomic

SOURCE = Path(tsuika.__file__).parent


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def decoy(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere" / "decoy.txt"
    path.parent.mkdir()
    path.write_text("not tsuika's to touch\n")
    return path


@pytest.fixture
def run_copy(tiny_run: tsuika.Run, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(tiny_run.path, copy)
    return copy


# -- 1. the one writer ---------------------------------------------------------------------


def test_a_planted_temporary_name_is_not_written_through(
    run_copy: Path, decoy: Path, capsys
) -> None:
    before = digest(decoy)
    (run_copy / "report.html.tmp").symlink_to(decoy)
    assert main(["report", str(run_copy)]) == 0
    assert digest(decoy) == before
    report = run_copy / "report.html"
    assert report.is_file() and not report.is_symlink()
    assert "<html" in report.read_text()


def test_a_target_that_is_a_link_is_refused(run_copy: Path, decoy: Path, capsys) -> None:
    before = digest(decoy)
    (run_copy / "report.html").unlink(missing_ok=True)
    (run_copy / "report.html").symlink_to(decoy)
    assert main(["report", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert "report.html is a symbolic link" in err and "Traceback" not in err
    assert digest(decoy) == before


def test_the_writers_refuse_links_and_never_leave_temporary_files(
    tmp_path: Path, decoy: Path
) -> None:
    before = digest(decoy)
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to(tmp_path / "nowhere" / "x.txt")
    for target in (dangling, tmp_path / "link.txt"):
        if not target.is_symlink():
            target.symlink_to(decoy)
        with pytest.raises(TsuikaError, match="symbolic link"):
            write_atomic(target, "x")
        with pytest.raises(TsuikaError, match="symbolic link"):
            append_lines(target, ["x\n"])
        with pytest.raises(TsuikaError, match="symbolic link"), fresh_folder(target):
            pass
    with pytest.raises(TsuikaError, match="already exists"):
        open_new(tmp_path / "link.txt")
    assert digest(decoy) == before
    assert not (tmp_path / "nowhere").exists()
    # A failed write leaves the old file and no temporary one.
    kept = tmp_path / "kept.txt"
    write_atomic(kept, "old")
    with pytest.raises(RuntimeError), atomic_file(kept) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert kept.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dangling.txt",
        "elsewhere",
        "kept.txt",
        "link.txt",
    ]
    with pytest.raises(TsuikaError, match="never overwrites"):
        write_atomic(kept, "new", replace=False)


def test_new_files_get_the_umask_mode(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a.txt", "x")
    with fresh_folder(tmp_path / "folder") as staging:
        write_atomic(staging / "b.txt", "y")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "folder" / "b.txt").read_text() == "y"


def test_compare_out_is_never_a_link_nor_a_system_folder(
    tiny_run: tsuika.Run, tmp_path: Path, decoy: Path, capsys
) -> None:
    before = digest(decoy)
    runs = [str(tiny_run.path), str(tiny_run.path)]
    (tmp_path / "page.html").symlink_to(decoy)
    (tmp_path / "dangling.html").symlink_to(tmp_path / "elsewhere" / "new.html")
    for out in ("page.html", "dangling.html"):
        assert main(["compare", *runs, "--out", str(tmp_path / out)]) == 2
    assert main(["compare", *runs, "--out", "/proc/x.html"]) == 2
    err = capsys.readouterr().err
    assert "dangling.html is a symbolic link" in err and "Traceback" not in err
    assert "cannot write /proc/x.html" in err
    assert digest(decoy) == before
    assert not (tmp_path / "elsewhere" / "new.html").exists()


# -- 2. resume refuses links inside the run folder -----------------------------------------


def test_resume_refuses_a_run_folder_holding_a_link(run_copy: Path, decoy: Path, capsys) -> None:
    (run_copy / "summary.json").unlink()  # an unfinished run
    (run_copy / "metrics.jsonl").unlink()
    (run_copy / "metrics.jsonl").symlink_to(decoy)
    before = digest(decoy)
    assert main(["train", "--resume", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl is a symbolic link" in err and "Traceback" not in err
    assert digest(decoy) == before


def test_the_metrics_log_refuses_a_link(tmp_path: Path, decoy: Path) -> None:
    from tsuika.train.metrics_log import MetricsLog

    link = tmp_path / "metrics.jsonl"
    link.symlink_to(decoy)
    before = digest(decoy)
    with pytest.raises(TsuikaError, match="symbolic link"):
        MetricsLog(link).writer("train")([{"epoch": 1, "loss": 0.5}])
    assert digest(decoy) == before


# -- 3. export's --out (generate's is in test_concepts: it needs a text-to-image run) -------


def test_export_out_a_dangling_link_is_refused(run_copy: Path, tmp_path: Path, capsys) -> None:
    link = tmp_path / "exported"
    link.symlink_to(tmp_path / "target-of-link")
    assert main(["export", str(run_copy), "--out", str(link)]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert not (tmp_path / "target-of-link").exists()


def test_the_second_of_two_exports_to_one_folder_is_told_it_exists(
    run_copy: Path, tmp_path: Path
) -> None:
    out = tmp_path / "exported"
    with pytest.raises(TsuikaError, match="already exists"), fresh_folder(out) as staging:
        (staging / "a").write_text("first")
        out.mkdir()  # the other export finished first
        (out / "b").write_text("other")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -- the rule: every write goes through tsuika.files ---------------------------------------

WRITERS = {"write_text", "write_bytes", "save_pretrained", "save_file", "rename", "symlink_to"}
"""Methods that create or replace a file (and `open(…, "w")`, safetensors' `save_file`)."""
MODULE_WRITERS = {("torch", "save"), ("os", "replace"), ("os", "rename"), ("shutil", "move")}
MODULE_WRITERS |= {("shutil", name) for name in ("copy", "copy2", "copyfile", "copytree")}
OWN_SAVERS = {"method", "loop", "self"}
"""Receivers of `.save(...)` that are tsuika's own (Method.save, the loop's checkpoint)."""
SAFE_BLOCKS = {"atomic_file", "fresh_folder"}

FRESH_FOLDER_WRITERS = {
    ("methods/adapters.py", "save"): "Method.save: runs.save_model hands it a fresh folder",
    ("export/hf_folder.py", "write_text"): "export.staged hands it a fresh folder",
    ("export/hf_folder.py", "write_image"): "export.staged hands it a fresh folder",
    ("export/hf_folder.py", "write_causal"): "export.staged hands it a fresh folder",
    ("export/onnx_graph.py", "write_onnx"): "export.staged hands it a fresh folder",
    ("export/onnx_graph.py", "quantised"): "export.staged hands it a fresh folder",
    ("train/checkpoint.py", "save_checkpoint"): "written inside its own fresh_folder block",
    ("train/sharding.py", "save_sharded"): "the main process's fresh_folder block, its name "
    "told to the others",
}
"""Functions that write with a library's own writer into a folder that `fresh_folder` made
(nothing in it can be a planted link), each with where that folder comes from."""


def _is_write(call: ast.Call) -> bool:
    func = call.func
    if isinstance(func, ast.Name):
        if func.id == "open":
            mode = call.args[1] if len(call.args) > 1 else None
            mode = next((k.value for k in call.keywords if k.arg == "mode"), mode)
            return isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax+")
        return func.id == "save_file"
    if not isinstance(func, ast.Attribute):
        return False
    owner = func.value.id if isinstance(func.value, ast.Name) else None
    if (owner, func.attr) in MODULE_WRITERS:
        return True
    if func.attr == "save":
        in_memory = bool(call.args) and getattr(call.args[0], "id", "") == "buffer"
        return owner not in OWN_SAVERS and owner != "torch" and not in_memory
    return func.attr in WRITERS


def _unsafe_writes(text: str, module: str) -> list[str]:
    tree = ast.parse(text)
    found: list[str] = []

    def visit(node: ast.AST, function: str, safe: bool) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function, safe = node.name, (module, node.name) in FRESH_FOLDER_WRITERS
        if isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                call = item.context_expr
                name = getattr(call, "func", None)
                name = getattr(name, "id", getattr(name, "attr", None))
                safe = safe or name in SAFE_BLOCKS
        if isinstance(node, ast.Call) and _is_write(node) and not safe:
            found.append(f"{module}:{node.lineno} in {function}()")
        for child in ast.iter_child_nodes(node):
            visit(child, function, safe)

    visit(tree, "<module>", False)
    return found


def test_every_file_is_written_through_tsuika_files() -> None:
    unsafe = [
        where
        for path in sorted(SOURCE.rglob("*.py"))
        if path.name != "files.py" or path.parent != SOURCE
        for where in _unsafe_writes(path.read_text("utf-8"), path.relative_to(SOURCE).as_posix())
    ]
    assert unsafe == [], (
        "these calls write a file outside tsuika.files (use write_atomic, append_lines, "
        "open_new, or write inside `with atomic_file(...)` / `with fresh_folder(...)`)"
    )


def test_the_rule_catches_a_plain_write() -> None:
    probe = (
        "def f(p):\n    p.write_text('x')\n    open(p, 'a')\n    img.save(p)\n"
        "    open(p).read()\n    method.save(model, p)\n"
        "    with atomic_file(p) as t:\n        t.write_text('ok')\n"
    )
    assert _unsafe_writes(probe, "probe.py") == [
        "probe.py:2 in f()",
        "probe.py:3 in f()",
        "probe.py:4 in f()",
    ]


def test_fresh_folder_writers_exist() -> None:
    """The allowance above names real functions (a rename would silently widen it)."""
    for module, function in FRESH_FOLDER_WRITERS:
        tree = ast.parse((SOURCE / module).read_text(encoding="utf-8"))
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert function in names, (module, function)
