"""Each task and method declares the config sections it reads (`sections`, issue 32 item 1):
no section of the config belongs to nobody, and a setting the run's parts do not read is
named in one warning instead of changing nothing in silence."""

from __future__ import annotations

from helpers import fast_config
from pydantic import BaseModel

import tsuika
from tsuika.config import GLOBAL_SECTIONS, Config, load_config, unread_settings
from tsuika.methods import METHODS
from tsuika.tasks import TASKS


def test_every_section_of_the_config_is_global_or_read_by_a_registered_part() -> None:
    sections = {
        name
        for name, field in Config.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    }
    declared = {s for part in (*METHODS.values(), *TASKS.values()) for s in part.sections}
    assert sections - set(GLOBAL_SECTIONS) == declared  # and no part names a missing one


def test_the_settings_no_part_reads_are_named() -> None:
    config = load_config(None, ["adapter.r=16", "finetune.freeze=2", "train.epochs=3"])
    assert unread_settings(config, {"finetune"}) == ["adapter.r"]
    assert unread_settings(config, {"finetune", "adapter"}) == []
    assert unread_settings(load_config(), set()) == []  # defaults are nobody's mistake


def test_a_run_warns_of_a_section_its_method_does_not_read(
    tiny_bert_dir, tiny_csv, tmp_path, capsys
) -> None:
    settings = fast_config(tiny_bert_dir, tiny_csv, tmp_path, train={"epochs": 1}, adapter={"r": 4})
    tsuika.train(**settings)
    err = capsys.readouterr().err
    assert "adapter.r: method transfer and task classify do not read these settings" in err
    tsuika.train(**{**settings, "method": "lora"})  # lora reads `adapter`: no warning
    assert "do not read these settings" not in capsys.readouterr().err
