"""Issue 32, item 1 (the command line's part): the one argument without `=` is read as what it
is (a config, or the training data), and `--method` / `--task` list the registries."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from builders import text_table

from tsuika.cli import main
from tsuika.errors import TsuikaError

CONFIG_COMMANDS = {
    # command → where its config goes (the API function the command calls)
    "train": "tsuika.api.train",
    "distill": "tsuika.api.train",
    "check": "tsuika.advice.commands.check",
    "rank": "tsuika.advice.commands.rank",
    "plan": "tsuika.plan.plan",
}


@pytest.fixture
def table(tmp_path: Path) -> Path:
    return text_table(tmp_path / "train.csv", n=24)


def config_given(monkeypatch, command: str, args: list[str]):
    """The config `tsuika COMMAND ARGS` hands to its API function (which is stopped there)."""
    seen = []

    def stop(config, *args, **kwargs):
        seen.append(config)
        raise TsuikaError("stopped by the test")

    monkeypatch.setattr(CONFIG_COMMANDS[command], stop)
    assert main([command, *args]) == 2
    assert len(seen) == 1, "the command failed before its config was built"
    return seen[0]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    return err


@pytest.mark.parametrize("command", sorted(CONFIG_COMMANDS))
def test_a_table_where_the_config_goes_is_the_training_data(command, table, monkeypatch, capsys):
    config = config_given(monkeypatch, command, [str(table), "seed=3"])
    assert config.data.train == str(table)
    assert config.seed == 3  # the key=value pairs still apply


@pytest.mark.parametrize(
    "given", ["reviews.tsv", "chat.jsonl", "rows.json", "rows.txt", "bundled:reviews", "FOLDER"]
)
def test_each_kind_of_data_reads_as_the_training_data(given, tmp_path, monkeypatch, capsys):
    if given == "FOLDER":  # an image folder (its contents are read later, by the run)
        given = str(tmp_path / "images")
        Path(given).mkdir()
    elif not given.startswith("bundled:"):
        given = str(tmp_path / given)
    assert config_given(monkeypatch, "check", [given]).data.train == given


def test_check_runs_its_checks_on_a_table_given_where_the_config_goes(table, tiny_bert_dir, capsys):
    assert main(["check", str(table), f"model={tiny_bert_dir}", "--quick", "--json"]) == 0
    findings = json.loads(capsys.readouterr().out)
    assert {"balance", "duplicates"} <= {finding["check"] for finding in findings}


def test_a_yaml_file_is_still_the_config(table, tmp_path, monkeypatch, capsys):
    config_file = tmp_path / "settings.yml"
    config_file.write_text(yaml.safe_dump({"data": {"train": str(table)}, "name": "x"}))
    config = config_given(monkeypatch, "train", [str(config_file)])
    assert (config.data.train, config.name) == (str(table), "x")


def test_a_yaml_file_that_is_not_a_mapping_keeps_its_error(tmp_path, capsys):
    config_file = tmp_path / "config.yaml"
    config_file.write_text("- a\n- list\n")
    assert main(["check", str(config_file), "--quick"]) == 2
    assert "must be a mapping of keys" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("notes.md", b"# notes\n", "neither a YAML config nor data"),
        ("weights.bin", bytes(range(256)), "neither a YAML config nor data"),
        ("train.parquet", b"PAR1", "cannot be read as Parquet"),
        ("train.csv.gz", b"\x1f\x8b\x08", "not a readable gzip file"),
        ("train.xlsx", b"PK\x03\x04", "save it as CSV UTF-8"),
    ],
)
def test_a_file_that_is_neither_config_nor_readable_data_is_one_line(
    name, content, expected, tmp_path, capsys
):
    path = tmp_path / name
    path.write_bytes(content)
    assert main(["check", str(path), "--quick"]) == 2
    err = one_line_error(capsys)
    assert name in err and expected in err
    assert not (tmp_path / "runs").exists()


def test_a_path_that_does_not_exist_says_what_was_expected(tmp_path, capsys):
    assert main(["check", str(tmp_path / "my-data"), "--quick"]) == 2
    err = one_line_error(capsys)
    assert "my-data" in err and "CONFIG.yaml" in err and "image folder" in err


def test_the_training_data_given_twice_is_an_error(table, tmp_path, capsys):
    other = text_table(tmp_path / "other.csv", n=8)
    assert main(["check", str(table), "--data", str(other), "--quick"]) == 2
    err = one_line_error(capsys)
    assert "train.csv" in err and "other.csv" in err


def _listed(help_text: str) -> list[str]:
    """The names an option's help lists: `a (note) | b | c` → [a, b, c]."""
    return [re.sub(r"\s*\(.*\)", "", part).strip() for part in help_text.split("|")]


def test_the_method_and_task_choices_are_the_registries():
    import typer

    from tsuika.cli import app
    from tsuika.methods import METHODS
    from tsuika.tasks import TASKS

    options = {p.name: p for p in typer.main.get_command(app).commands["train"].params}
    assert _listed(options["method"].help) == ["auto", *METHODS]
    assert _listed(options["task"].help) == ["auto", *TASKS]
