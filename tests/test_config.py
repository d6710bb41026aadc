"""Configuration: unknown keys and wrong types are errors naming the key; overrides are YAML."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import run_folders

import tsuika
from tsuika.config import Config, load_config, parse_overrides
from tsuika.errors import TsuikaError


def test_defaults_need_no_file():
    config = load_config()
    assert config == Config()
    assert config.model == "minilm-l6"
    assert config.method == "auto"  # chosen from the data when a run starts
    assert config.train.cache == "auto"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"modle": "minilm-l6"}, "modle"),
        (["train.lrr=0.1"], "train.lrr"),
        (["data.txt_column=review"], "data.txt_column"),
        (["baselines.scrach=false"], "baselines.scrach"),
    ],
)
def test_unknown_key_is_an_error_naming_it(overrides, key):
    with pytest.raises(TsuikaError, match="unknown key") as err:
        load_config(overrides=overrides)
    assert f"`{key}`" in str(err.value)


def test_unknown_key_in_a_yaml_file_names_the_file_and_key(write_file):
    path = write_file("config.yaml", "model: minilm-l6\ntrain:\n  epochs: 3\n  lrr: 0.1\n")
    with pytest.raises(TsuikaError, match=r"unknown key `train\.lrr`") as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "`train.lrr`" in str(err.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.epochs=abc", "train.epochs"),
        ("data.k=-1", "data.k"),
        ("train.epochs=0", "train.epochs"),
        ("data.test_fraction=1.5", "data.test_fraction"),
        ("train.cache=sometimes", "train.cache"),
        ("model=", "model"),
        ("regression.loss=l1", "regression.loss"),
        ("regression.huber_delta=0", "regression.huber_delta"),
        ("multitask.weights={a: heavy}", "multitask.weights.a"),
    ],
)
def test_wrong_value_is_an_error_naming_the_key(override, key):
    with pytest.raises(TsuikaError, match=rf"`{re.escape(key)}`: ") as err:
        load_config(overrides=[override])
    assert f"`{key}`" in str(err.value)
    assert "unknown key" not in str(err.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("method", "quantum", "unknown method `quantum`; methods are transfer, finetune"),
        ("task", "distill", "unknown task `distill`; tasks are classify, multi-task, regression"),
    ],
)
def test_method_and_task_names_are_checked_when_a_run_starts(base_config, key, value, message):
    # Methods and tasks are registries: a config names one, and the run checks the name.
    assert getattr(load_config(overrides=[f"{key}={value}"]), key) == value
    with pytest.raises(TsuikaError, match=re.escape(message)):
        tsuika.train({**base_config, key: value})
    assert run_folders(Path(base_config["output"])) == []


def test_label_column_may_list_several_columns():
    config = load_config(overrides=["data.label_column=[topic, sentiment]", "task=multi-task"])
    assert config.data.label_column == ["topic", "sentiment"] and config.task == "multi-task"
    assert load_config(overrides=["data.label_column=stars"]).data.label_column == "stars"


def test_overrides_keep_their_text_until_validation_types_it():
    assert parse_overrides(
        ["data.k=64", "progress=false", "name=null", "head.type=mlp", "train.lr=0.001"]
    ) == {
        "data": {"k": "64"},
        "progress": "false",
        "name": "null",
        "head": {"type": "mlp"},
        "train": {"lr": "0.001"},
    }


def test_overrides_build_a_typed_config():
    config = load_config(
        overrides=["train.lr=1e-4", "data.k=64", "train.patience=null", "progress=off"]
    )
    assert config.train.lr == 1e-4
    assert config.data.k == 64
    assert config.train.patience is None
    assert config.progress is False
    assert config.train.epochs == Config().train.epochs  # siblings keep their defaults


def test_overrides_win_over_the_yaml_file_and_keep_its_other_keys(write_file):
    path = write_file("config.yaml", "model: some-folder\ntrain:\n  epochs: 3\n  lr: 0.5\n")
    config = load_config(path, ["train.epochs=7"])
    assert config.model == "some-folder"
    assert config.train.epochs == 7
    assert config.train.lr == 0.5


def test_override_value_may_contain_equals_signs():
    assert parse_overrides(["name=a=b"]) == {"name": "a=b"}


def test_override_without_equals_is_an_error():
    with pytest.raises(TsuikaError, match=r"`train\.epochs` is not key=value"):
        parse_overrides(["train.epochs"])


def test_override_below_a_value_is_an_error():
    with pytest.raises(TsuikaError, match="`epochs` is a value, not a section"):
        parse_overrides(["train.epochs=3", "train.epochs.max=4"])


def test_numeric_looking_name_is_kept_as_a_string():
    assert load_config(overrides=["name=2024"]).name == "2024"


@pytest.mark.parametrize("text", ["- model\n- data\n", "just a string\n", "42\n"])
def test_yaml_file_that_is_not_a_mapping_is_an_error(write_file, text):
    path = write_file("config.yaml", text)
    with pytest.raises(TsuikaError, match="must be a mapping") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_invalid_yaml_is_an_error_naming_the_file(write_file):
    path = write_file("config.yaml", "model: [unclosed\n")
    with pytest.raises(TsuikaError, match="not valid YAML") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_empty_yaml_file_gives_the_defaults(write_file):
    assert load_config(write_file("config.yaml", "")) == Config()


def test_missing_config_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(TsuikaError, match="not found") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_every_example_config_is_valid():
    examples = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
    assert len(examples) >= 5
    for path in examples:
        load_config(path)  # raises TsuikaError naming the key on any mistake


def test_an_unquoted_star_pattern_says_to_quote_it():
    with pytest.raises(TsuikaError, match=r"quote patterns that start with \*"):
        parse_overrides(["adapter.target_modules=[*query,*value]"])
    parsed = parse_overrides(["adapter.target_modules=['*query','*value']"])
    assert parsed["adapter"]["target_modules"] == ["*query", "*value"]


@pytest.mark.parametrize("method", ["dreambooth", "textual-inversion", "hypernetwork"])
def test_what_the_user_set_wins_even_when_it_equals_the_global_default(method: str) -> None:
    """Issue 32: `--method dreambooth train.epochs=50` trained 30 epochs, because the concept
    defaults replaced every value *equal* to the global default instead of every value the
    user left unset."""
    from tsuika.api import as_config
    from tsuika.config import TrainConfig
    from tsuika.methods import method_class
    from tsuika.methods.concepts import CONCEPT_TRAINING

    default = TrainConfig.model_fields["epochs"].default
    chosen = as_config(
        None, {"method": method, "task": "text-to-image", "train": {"epochs": default}}
    )
    assert method_class(method).configured(chosen).train.epochs == default
    unset = as_config(None, {"method": method, "task": "text-to-image"})
    assert method_class(method).configured(unset).train.epochs == CONCEPT_TRAINING["epochs"]


def test_one_resolve_step_user_over_recipe_over_method_over_global(tmp_path: Path) -> None:
    """Issue 32, item 3: the recipe's choices for the data win over the method's defaults,
    what the user set wins over both, and the result resolves the same again — after a round
    trip through the run's config.yaml too (what `--resume` reads)."""
    from tsuika.api import as_config
    from tsuika.config import TrainConfig, load_config, to_yaml
    from tsuika.methods import method_class
    from tsuika.methods.concepts import CONCEPT_TRAINING
    from tsuika.methods.recipe import Recipe

    user = as_config(None, {"task": "text-to-image", "train": {"batch_size": 2}})
    recipe = Recipe("dreambooth", {"train": {"epochs": 7, "batch_size": 4}}, "a test")
    config = recipe.applied(user)
    assert config.method == "dreambooth"
    assert config.train.epochs == 7  # the recipe's, over the method's 30
    assert config.train.batch_size == 2  # the user's, over the recipe's and the method's
    assert config.train.warmup == CONCEPT_TRAINING["warmup"]  # the method's, over the global
    assert config.train.lr == TrainConfig.model_fields["lr"].default  # nobody chose it
    # The user's and the recipe's decisions are remembered as such; the method's are not.
    assert config.train.model_fields_set == {"batch_size", "epochs"}
    again = method_class("dreambooth").configured(config)
    assert again.model_dump() == config.model_dump()
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(config), encoding="utf-8")
    resumed = method_class("dreambooth").configured(load_config(saved))
    assert resumed.model_dump() == config.model_dump()


def test_a_derived_value_is_not_taken_for_the_users(tmp_path: Path) -> None:
    """`updated` (a method's derived values) keeps the user's fields as the only ones set, so
    a later step still tells them apart."""
    from tsuika.config import load_config, updated

    config = load_config(overrides=["train.epochs=3"])
    derived = updated(config, {"model": "efficientnet-lite0", "train": {"lr": 0.5}})
    assert (derived.model, derived.train.lr, derived.train.epochs) == ("efficientnet-lite0", 0.5, 3)
    assert derived.model_fields_set == {"train"}
    assert derived.train.model_fields_set == {"epochs"}
