"""Issue 31, items 6 and 10: inputs that ended in a traceback, or were silently taken as a
default or without a cap, now end in one message naming the file, key or option (exit 2).

Item 6 here: a chat role that is not a string; `rank` with too few examples per class (or
for regression's folds); a retain file with a one-row class; a `metadata.jsonl` that is not
UTF-8 or is nested too deeply; a class template that is not one `{}`; a hypernetwork too large
to allocate; `generate`'s temperature, seed, non-UTF-8 prompt and output folder (checked before
anything is drawn); a model path rich would read as markup; meta.json without `base` or with a
bad `model.image`. Item 10: `generate`'s `--max-new-tokens 0`, no cap on new tokens or
pictures, `--guidance` below 1 or not a number, and an empty prompt."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from builders import chat_rows, text_table
from helpers import fast_config, run_folders
from PIL import Image

import tsuika
from tsuika.cli import main
from tsuika.config import load_config
from tsuika.errors import TsuikaError

# -- item 6: chat turns whose role is not a string -----------------------------------------------

UNHASHABLE_ROLE = {
    "messages": [
        {"role": ["user"], "content": "good?"},
        {"role": "assistant", "content": "pos"},
    ]
}


@pytest.fixture
def bad_chat(write_file) -> Path:
    return write_file("bad-chat.jsonl", json.dumps(UNHASHABLE_ROLE) + "\n")


@pytest.fixture
def good_chat(write_file) -> Path:
    return write_file("chat.jsonl", "".join(json.dumps(r) + "\n" for r in chat_rows(16)))


def _error(capsys) -> str:
    return capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "check", "generate"])
def test_a_role_that_is_a_list_is_an_error_naming_the_line(
    command, bad_chat, tiny_llama_dir, tmp_path, capsys
):
    model = ["--model", str(tiny_llama_dir), "task=causal-lm"]
    args = {
        "train": ["train", *model, "--data", str(bad_chat), "--output", str(tmp_path / "runs")],
        "check": ["check", *model, "--data", str(bad_chat), "--quick"],
        "generate": ["generate", str(tmp_path / "no-run"), "--file", str(bad_chat)],
    }[command]
    assert main(args) == 2
    assert f"{bad_chat} line 1: turn 1 of `messages` needs a role" in _error(capsys)
    assert run_folders(tmp_path / "runs") == []


def test_a_retain_file_whose_role_is_a_list_is_an_error(
    bad_chat, good_chat, tiny_llama_dir, tmp_path
):
    config = fast_config(tiny_llama_dir, good_chat, tmp_path / "runs", task="causal-lm")
    config |= {"method": "lora", "data": {"train": str(good_chat), "retain": str(bad_chat)}}
    with pytest.raises(TsuikaError, match=r"line 1: turn 1 of `messages` needs a role"):
        tsuika.train(config)
    assert run_folders(tmp_path / "runs") == []


# -- item 6: rank and the retain probe with too few examples ---------------------------------


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--limit", "0"], r"--limit 0: give how many training examples to score"),
        (["--limit", "-1"], r"--limit -1: give how many"),
        (["--limit", "1"], r"class '(pos|neg)' has only 1 example.*raise --limit"),
        (["data.k=1"], r"class '(pos|neg)' has only 1 example.*a larger data.k"),
    ],
)
def test_rank_refuses_too_few_examples_per_class(extra, message, tiny_bert_dir, tiny_csv, capsys):
    args = ["rank", "--data", str(tiny_csv), "--models", str(tiny_bert_dir), *extra]
    assert main([*args, "train.max_length=32"]) == 2
    assert re.search(message, _error(capsys))


@pytest.mark.parametrize("limit", ["3", "7"])  # 3: sklearn's ValueError; 7: a silent nan R²
def test_rank_for_regression_needs_two_examples_per_fold(limit, tiny_bert_dir, tmp_path, capsys):
    data = text_table(tmp_path / "scores.csv")
    args = ["rank", "--data", str(data), "--models", str(tiny_bert_dir), "--limit", limit]
    args += ["task=regression", "data.label_column=score", "train.max_length=32", "--json"]
    assert main(args) == 2
    assert "5-fold R² needs at least 10 examples" in _error(capsys)


def test_a_retain_file_with_a_one_row_class_is_an_error(base_config, write_file):
    retain = write_file("retain.csv", "text,label\na b,x\nc d,x\ne f,y\n")
    config = {**base_config, "method": "finetune"}
    config["data"] = {**base_config["data"], "retain": str(retain)}
    with pytest.raises(TsuikaError, match=r"data.retain .*class 'y' has only 1 example"):
        tsuika.train(config)
    assert run_folders(Path(base_config["output"])) == []


# -- item 6: a concept folder's captions that cannot be read ---------------------------------


@pytest.fixture
def concept_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "sneaker"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


NOT_UTF8 = '{"file_name": "0.png", "text": "café"}\n'.encode("latin-1")
NESTED = '{"file_name": "0.png", "text": "x", "deep": ' + "[" * 100_000 + "]" * 100_000 + "}\n"


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("metadata.jsonl", NOT_UTF8, "line 1: bytes that are not UTF-8"),
        ("metadata.jsonl", NESTED.encode(), "line 1: JSON nested too deeply"),
        ("0.txt", "a photo of a café".encode("latin-1"), "line 1: bytes that are not UTF-8"),
    ],
)
def test_text_to_image_check_names_an_unreadable_caption_file(
    name, content, message, concept_folder, capsys
):
    (concept_folder / name).write_bytes(content)
    args = ["check", "--data", str(concept_folder), "--model", "fashion-diffusion"]
    args += ["task=text-to-image", "diffusion.class_word=shoe", "diffusion.caption=a shoe"]
    assert main(args) == 2
    err = _error(capsys)
    assert str(concept_folder / name) in err and message in err


# -- item 6: config values that cannot work ---------------------------------------------------


@pytest.mark.parametrize("template", ["{}{}", "{x}", "{0.__class__}", "{0}", "no slot", "{"])
def test_the_class_template_must_hold_exactly_one_plain_slot(template):
    with pytest.raises(TsuikaError, match=r"diffusion.class_template.*exactly one \{\}"):
        load_config(None, {"diffusion": {"class_template": template}})
    kept = load_config(None, {"diffusion": {"class_template": "a {{b}} {}"}})
    assert kept.diffusion.class_template.format("shoe") == "a {b} shoe"


def test_a_hypernetwork_too_large_to_allocate_is_refused_with_the_limit():
    with pytest.raises(TsuikaError, match=r"layer_structure.*200,000,000 .*the limit is 64"):
        load_config(None, ["hypernetwork.layer_structure=[1,100000000,1]"])
    assert load_config(None, ["hypernetwork.layer_structure=[1,4,4,1]"])  # 24: allowed
    # A saved file's structure is checked the same way before a layer is allocated.
    from tsuika.models.hypernetwork import HypernetworkModule

    with pytest.raises(TsuikaError, match=r"\[1, 100, 1\] is too large.*the limit is 64"):
        HypernetworkModule(32, [1, 100, 1])


# -- item 6 and 10: generate's options and prompts, checked before the run is loaded ------------


@pytest.mark.parametrize(
    "options,message",
    [
        (["--temperature", "nan"], "--temperature nan: give a finite number above 0"),
        (["--temperature", "inf"], "--temperature inf: give a finite number above 0"),
        (["--seed", "99999999999999999999999"], "--seed 99999999999999999999999: give a whole"),
        (["--seed", "-1"], "--seed -1: give a whole number from 0 to 4294967295"),
        (["--max-new-tokens", "0"], "--max-new-tokens 0: give at least 1"),
        (["--n", "100000"], "--n 100000: give 1 to 64 pictures per prompt"),
        (["--n", "0"], "--n 0: give 1 to 64"),
        (["--guidance", "-1"], "--guidance -1.0: give a finite number of at least 1"),
        (["--guidance", "0"], "--guidance 0.0: give a finite number of at least 1"),
        (["--guidance", "nan"], "--guidance nan: give a finite number of at least 1"),
    ],
)
def test_generate_options_out_of_range_name_the_option(options, message, tmp_path, capsys):
    # The run does not exist: each error comes before anything is loaded.
    assert main(["generate", str(tmp_path / "no-run"), "a photo", *options]) == 2
    assert message in _error(capsys)


@pytest.mark.parametrize(
    "prompt,message",
    [
        ("", "prompt 1 is empty"),
        ("   ", "prompt 1 is empty"),
        # What Python makes of an argument with a byte that is not UTF-8 (surrogateescape).
        (b"caf\xe9".decode("utf-8", "surrogateescape"), "prompt 1 has bytes that are not UTF-8"),
    ],
)
def test_generate_refuses_an_empty_or_non_utf8_prompt(prompt, message, tmp_path, capsys):
    assert main(["generate", str(tmp_path / "no-run"), prompt]) == 2
    assert message in _error(capsys)


def test_generate_checks_the_out_folder_before_drawing(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    run = str(tmp_path / "no-run")
    assert main(["generate", run, "a photo", "--out", str(blocker / "sub" / "grid.png")]) == 2
    assert f"{blocker} is not a folder" in _error(capsys)
    if Path("/proc/self").is_dir():  # Linux: nothing can be created in /proc, not even by root
        assert main(["generate", run, "a photo", "--out", "/proc/x.png"]) == 2
        assert "--out /proc/x.png: cannot create a file in /proc" in _error(capsys)


@pytest.fixture(scope="module")
def lm_run(tiny_llama_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm")
    data = folder / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(16)), encoding="utf-8")
    config = fast_config(tiny_llama_dir, data, folder / "runs", task="causal-lm", method="lora")
    config["train"] = {"epochs": 1, "batch_size": 8, "patience": None}
    return tsuika.train(config)


def test_new_tokens_are_capped_at_the_context_length(lm_run, capsys, monkeypatch):
    run = str(lm_run.path)
    with monkeypatch.context() as patched:
        # Uncapped, this would decode for hours: any generation here fails the test at once.
        patched.setattr("tsuika.finished_run.generate", lambda *args: pytest.fail("not capped"))
        assert main(["generate", run, "say pos", "--max-new-tokens", "1000000000"]) == 2
    assert "--max-new-tokens 1000000000: at most 128 (the model's context length)" in _error(capsys)
    assert main(["generate", run, "say pos", "--max-new-tokens", "2"]) == 0


def test_sampling_steps_are_capped_at_the_noise_schedule(tmp_path):
    from test_concepts import tiny_pipeline

    from tsuika.config import Config
    from tsuika.finished_run import Run
    from tsuika.models.diffusion import diffusion_model
    from tsuika.tasks.text_to_image import TextToImage

    folder = tmp_path / "tiny-diffusion"
    tiny_pipeline().save_pretrained(folder, safe_serialization=True)
    settings = {"model": str(folder), "task": "text-to-image", "diffusion": {"caption": "a bag"}}
    task = TextToImage.from_config(Config.model_validate(settings))
    run = Run(tmp_path, diffusion_model(str(folder)), task, {})
    with pytest.raises(TsuikaError, match=r"--steps 5000: at most 1000"):
        run.images("a bag", 1, 0, steps=5000)


# -- item 6: a model path that rich would read as markup -------------------------------------


def test_a_model_path_with_brackets_is_printed_as_it_is(tiny_bert_dir, tiny_csv, tmp_path, capsys):
    model = tmp_path / "m[" / "b]"  # `[/b]` is a closing tag to rich
    shutil.copytree(tiny_bert_dir, model)
    args = ["train", "--model", str(model), "--data", str(tiny_csv), "--method", "transfer"]
    args += ["--output", str(tmp_path / "runs"), "--quiet", "train.epochs=1"]
    args += ["baselines.scratch=false", "report=false", "train.max_length=32"]
    assert main(args) == 0  # was rich's MarkupError once the run had finished
    assert "m[/b]" in "".join(capsys.readouterr().out.split())  # rich wraps long paths
    assert main(["inspect", str(model), "method=transfer"]) == 0
    assert "m[/b]undermethod" in "".join(capsys.readouterr().out.split())


# -- item 6: meta.json without `base` or with a bad `model.image` ------------------------------


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda meta: meta.pop("base"), "lacks the key `base`"),
        (lambda meta: meta.update(base=""), "`base` is not a model name"),
        (lambda meta: meta["model"].update(image=[]), "`model.image` is not an object"),
        (lambda meta: meta["model"].update(image={"size": 0}), "`model.image` is not an object"),
        (lambda meta: meta["model"].update(family=["text"]), "`model.family` is not"),
    ],
)
def test_distill_and_export_refuse_a_damaged_meta_naming_it(
    change, message, tiny_run, tiny_csv, tmp_path, capsys
):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_run.path, teacher)
    meta_path = teacher / "model" / "meta.json"
    meta = json.loads(meta_path.read_text())
    change(meta)
    meta_path.write_text(json.dumps(meta))
    output = tmp_path / "runs"
    args = ["distill", "--teacher", str(teacher), "--data", str(tiny_csv)]
    assert main([*args, "--output", str(output)]) == 2
    err = _error(capsys)
    assert str(meta_path) in err and message in err
    assert run_folders(output) == []
    assert main(["export", str(teacher), "--out", str(tmp_path / "exported")]) == 2
    err = _error(capsys)
    assert str(meta_path) in err and message in err
    assert not (tmp_path / "exported").exists()
