"""Plugins (issue 32, item 2): a separate installed package registers a method or a task
through the entry-point groups `tsuika.methods` / `tsuika.tasks`, and gets the command line,
the config, the report and the contract matrix as a built-in one does.

The registry rules are tested on fake distributions (a `*.dist-info` folder on `sys.path` is
all `importlib.metadata` needs); the example package `examples/plugin/` (BitFit) is installed
outside the virtual environment and trained with through the real command, in a subprocess."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from builders import text_table
from helpers import classifier, fast_config, run_folders
from safetensors.torch import load_file

import tsuika.methods
import tsuika.tasks
from tsuika.cli import main
from tsuika.config import build_config, load_config, plugin_sections
from tsuika.errors import TsuikaError
from tsuika.methods import Finetune, Method
from tsuika.plugins import registry
from tsuika.tasks import Task

ROOT = Path(__file__).resolve().parents[1]

PARTS = """
from tsuika.methods.transfer import Transfer
from tsuika.tasks.classify import Classify


from pydantic import BaseModel, ConfigDict, Field


class ProbeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: float = Field(1.0, gt=0)


class Probe(Transfer):
    name = "probe"
    settings_model = ProbeSettings


class Misnamed(Transfer):
    name = "something-else"


class NotAPart:
    name = "plain"


class Sorting(Classify):
    name = "sorting"
"""
"""A plugin module: two good parts (a method `probe`, a task `sorting`) and two wrong ones."""

Install = Callable[..., str]


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Install]:
    """`install(dist, {group: {name: "module:Class"}}, source=PARTS)` puts a distribution
    `dist` 1.0 with those entry points on `sys.path`, its module `<dist>_parts` holding
    `source`; returns the module's name. The modules are forgotten afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules: list[str] = []

    def add(dist: str, groups: dict[str, dict[str, str]], source: str = PARTS) -> str:
        module = dist.replace("-", "_") + "_parts"
        (site / f"{module}.py").write_text(source, encoding="utf-8")
        info = site / f"{module}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = []
        for group, entries in groups.items():
            lines.append(f"[{group}]")
            lines += [f"{name} = {value.format(module=module)}" for name, value in entries.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        importlib.invalidate_caches()
        modules.append(module)
        return module

    yield add
    for module in modules:
        sys.modules.pop(module, None)


def _methods() -> tuple[dict[str, type[Method]], dict[str, str]]:
    return registry("tsuika.methods", tsuika.methods.BUILT_IN, Method)


# -- the registry's rules -----------------------------------------------------------------
def test_a_plugin_method_comes_after_the_built_ins_in_their_order(install: Install) -> None:
    install("probe-kit", {"tsuika.methods": {"probe": "{module}:Probe"}})
    methods, unusable = _methods()
    assert list(methods) == [*tsuika.methods.BUILT_IN, "probe"]
    assert methods["probe"].__name__ == "Probe" and issubclass(methods["probe"], Method)
    assert unusable == {}


@pytest.fixture
def fresh_sections() -> Iterator[None]:
    """`plugin_sections` is read once per process: forget it around a test that installs."""
    plugin_sections.cache_clear()
    yield
    plugin_sections.cache_clear()


def test_a_plugin_method_has_its_own_settings_section(install: Install, fresh_sections) -> None:
    install("probe-kit", {"tsuika.methods": {"probe": "{module}:Probe"}})
    config = build_config({"method": "probe", "probe": {"scale": "2.5"}})
    assert config.part_settings("probe").scale == 2.5  # validated and converted by its model
    assert build_config({}).part_settings("probe").scale == 1.0  # its default
    assert config.part_settings("train") is config.train  # a built-in section, the same way
    assert _methods()[0]["probe"].config_sections() == ("probe",)
    # kept as the user gave it: a resolve step still tells the user's values from defaults
    assert config.model_dump(exclude_unset=True)["probe"] == {"scale": 2.5}
    with pytest.raises(TsuikaError, match=r"^config: `probe.scale`: Input should be greater"):
        build_config({"probe": {"scale": -1}})
    with pytest.raises(TsuikaError, match=r"^config: `probe.nope`: Extra inputs"):
        build_config({"probe": {"nope": 1}})
    with pytest.raises(TsuikaError, match=r"^config: unknown key `prob` \(check the spelling"):
        build_config({"prob": {"scale": 1}})
    overridden = load_config(None, ["probe.scale=3"])
    assert overridden.part_settings("probe").scale == 3.0


def test_a_plugin_task_is_registered_the_same_way(install: Install) -> None:
    install("sorting-kit", {"tsuika.tasks": {"sorting": "{module}:Sorting"}})
    tasks, unusable = registry("tsuika.tasks", tsuika.tasks.BUILT_IN, Task)
    assert list(tasks) == [*tsuika.tasks.BUILT_IN, "sorting"]
    assert tasks["sorting"].name == "sorting" and unusable == {}


def test_a_plugin_cannot_replace_a_built_in_and_is_not_even_imported(
    install: Install, capsys: pytest.CaptureFixture[str]
) -> None:
    # The module does not exist: importing it would make the plugin unusable, not ignored.
    install("clash-kit", {"tsuika.methods": {"finetune": "no_such_module:Finetune"}})
    methods, unusable = _methods()
    assert methods["finetune"] is Finetune and unusable == {}
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "plugin method `finetune` (distribution clash-kit 1.0, entry point" in err
    assert "is already the method of tsuika; rename the entry point in group tsuika.methods" in err


def test_of_two_plugins_of_one_name_the_first_distribution_by_name_wins(
    install: Install, capsys: pytest.CaptureFixture[str]
) -> None:
    first = install("a-kit", {"tsuika.methods": {"probe": "{module}:Probe"}})
    install("b-kit", {"tsuika.methods": {"probe": "{module}:Probe"}})
    methods, _ = _methods()
    assert methods["probe"].__module__ == first
    err = capsys.readouterr().err
    assert "(distribution b-kit 1.0" in err and "is already the method of a-kit 1.0" in err


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        (
            "import no_such_dependency\n",
            "ModuleNotFoundError: No module named 'no_such_dependency'",
        ),
        ("raise RuntimeError('needs a GPU')\n", "RuntimeError: needs a GPU"),
        ("", "AttributeError"),  # the module imports, the class is not there
    ],
    ids=["missing-dependency", "raises", "no-such-class"],
)
def test_a_plugin_that_fails_to_import_is_left_out_with_one_line(
    install: Install, capsys: pytest.CaptureFixture[str], source: str, problem: str
) -> None:
    module = install("broken-kit", {"tsuika.methods": {"broken": "{module}:Broken"}}, source)
    methods, unusable = _methods()
    assert "broken" not in methods
    assert list(methods) == list(tsuika.methods.BUILT_IN)  # every other method stays usable
    expected = (
        f"plugin method `broken` (distribution broken-kit 1.0, entry point {module}:Broken) "
        "cannot be imported: "
    )
    assert unusable["broken"].startswith(expected), unusable
    assert problem in unusable["broken"]
    assert unusable["broken"].endswith("; fix or uninstall broken-kit")
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("warning: plugin method `broken`") and "(left out)" in err


@pytest.mark.parametrize(
    ("group", "name", "target", "problem"),
    [
        ("tsuika.methods", "plain", "NotAPart", "is not a subclass of tsuika.methods.base.Method"),
        ("tsuika.tasks", "probe", "Probe", "is not a subclass of tsuika.tasks.base.Task"),
        (
            "tsuika.methods",
            "other",
            "Misnamed",
            "has class attribute name = 'something-else', not 'other'",
        ),
    ],
    ids=["not-a-method", "a-method-as-a-task", "misnamed"],
)
def test_a_plugin_class_must_be_a_part_named_as_its_entry_point(
    install: Install, group: str, name: str, target: str, problem: str
) -> None:
    install("odd-kit", {group: {name: f"{{module}}:{target}"}})
    built_ins, base = {
        "tsuika.methods": (tsuika.methods.BUILT_IN, Method),
        "tsuika.tasks": (tsuika.tasks.BUILT_IN, Task),
    }[group]
    parts, unusable = registry(group, built_ins, base)
    assert name not in parts
    assert f":{target}) {problem}; fix or uninstall odd-kit" in unusable[name]


def test_asking_for_an_unusable_plugin_method_by_name_is_the_error(
    install: Install,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    base_config: dict,
    tmp_path: Path,
) -> None:
    install("broken-kit", {"tsuika.methods": {"broken": "no_such_module:Broken"}})
    methods, unusable = _methods()
    monkeypatch.setattr(tsuika.methods, "METHODS", methods)
    monkeypatch.setattr(tsuika.methods, "UNUSABLE", unusable)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**base_config, "method": "broken"}), encoding="utf-8")
    capsys.readouterr()

    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "error: plugin method `broken` (distribution broken-kit 1.0" in err
    assert "cannot be imported: ModuleNotFoundError" in err
    assert run_folders(Path(base_config["output"])) == []  # refused before any run folder
    assert tsuika.methods.method_class("transfer") is tsuika.methods.Transfer


def test_asking_for_an_unusable_plugin_task_by_name_is_the_error(
    install: Install, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tsuika.config import Config

    install("broken-kit", {"tsuika.tasks": {"sorting": "no_such_module:Sorting"}})
    tasks, unusable = registry("tsuika.tasks", tsuika.tasks.BUILT_IN, Task)
    monkeypatch.setattr(tsuika.tasks, "TASKS", tasks)
    monkeypatch.setattr(tsuika.tasks, "UNUSABLE", unusable)
    with pytest.raises(TsuikaError, match=r"^plugin task `sorting` \(distribution broken-kit"):
        tsuika.tasks.task_for(Config(task="sorting"))


# -- the example package, installed and used from outside the repo ------------------------
@pytest.fixture(scope="module")
def bitfit_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`examples/plugin` installed with pip into a folder of its own (not the virtual
    environment), from a copy so that the build leaves nothing in the repo."""
    root = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(ROOT / "examples" / "plugin", root / "source")
    site = root / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"]
    done = subprocess.run(
        [*pip, "--no-build-isolation", "--target", str(site), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return site


def _tsuika(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real command in a fresh interpreter that finds the plugin only on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "tsuika.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


@pytest.mark.slow
def test_the_command_offers_an_installed_plugin_method(bitfit_site: Path, tmp_path: Path):
    done = _tsuika(bitfit_site, "train", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "| hypernetwork | bitfit" in " ".join(done.stdout.split())
    assert "plugin" not in done.stderr  # a healthy plugin: no warning


@pytest.mark.slow
def test_training_with_an_installed_plugin_method(
    bitfit_site: Path, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "runs"
    table = text_table(tmp_path / "text.csv")
    settings = fast_config(tiny_bert_dir, table, output, method="bitfit", name="bitfit")
    config = tmp_path / "config.yaml"
    own = {"bitfit": {"lr": 2e-3}}  # the plugin's own settings section, through the command
    config.write_text(yaml.safe_dump({**settings, **own, "report": True}), encoding="utf-8")

    done = _tsuika(bitfit_site, "train", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    run = output / "bitfit"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "bitfit"
    assert yaml.safe_load((run / "config.yaml").read_text())["bitfit"] == {"lr": 2e-3}
    assert "change nothing" not in done.stderr  # bitfit reads its own section
    assert "bitfit" in (run / "report.html").read_text(encoding="utf-8")

    # Only the biases below the head, and the head, trained: the summary counts exactly
    # those, and they are what the run saved; the biases moved from their pretrained values.
    base = classifier(str(tiny_bert_dir), 2).state_dict()
    head = f"stages.{len(summary['parameters']['groups']) - 1}."
    saved = load_file(str(run / "model" / "weights.safetensors"))
    biases = {key for key in saved if not key.startswith(head)}
    assert biases == {k for k in base if k.endswith(".bias") and not k.startswith(head)}
    assert summary["parameters"]["trained"] == sum(t.numel() for t in saved.values())
    assert any(not saved[key].equal(base[key]) for key in biases)

    done = _tsuika(bitfit_site, "predict", str(run), "good great movie", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    label, probability, text = done.stdout.strip().split("\t")
    assert label in {"pos", "neg"} and 0.5 <= float(probability) <= 1
    assert text == "good great movie"


def test_the_contract_matrix_gets_cells_for_a_plugin_method(
    bitfit_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tests/test_contracts.py builds its cells from `METHODS` when it is imported: with the
    plugin installed, BitFit's cells are there (they pass: run it with PYTHONPATH=<site>)."""
    monkeypatch.syspath_prepend(str(bitfit_site))
    try:
        methods, unusable = _methods()
        assert "bitfit" in methods and unusable == {}
        monkeypatch.setattr(tsuika.methods, "METHODS", methods)
        path = ROOT / "tests" / "test_contracts.py"
        spec = importlib.util.spec_from_file_location("contracts_with_bitfit", path)
        contracts = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(contracts)
    finally:
        sys.modules.pop("tsuika_bitfit", None)
    cells = [cell for cell in contracts.CELLS if cell[0] == "bitfit"]
    assert {model for _, model, _ in cells} == {"tiny-bert", "tiny-cnn"}
