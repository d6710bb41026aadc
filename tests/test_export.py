"""`tsuika export`: ONNX graphs that ONNX Runtime runs as PyTorch does (tiny BERT, tiny CNN;
dynamic batch and length; adapters merged), `hf` folders whose documented code reproduces the
run without tsuika, the model card, and the rules (never overwrite, clear errors)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from builders import TINY_CNN, TinyCNN, colour_table, register_tiny_models, text_table
from helpers import fast_config

import tsuika
from tsuika.cli import main
from tsuika.config import build_config
from tsuika.errors import TsuikaError
from tsuika.export import export
from tsuika.export.card import base_model, data_licence, distillation, folder_licence
from tsuika.export.graph import merge_adapters
from tsuika.methods import METHODS
from tsuika.models import model_for
from tsuika.tasks import CausalLM

SHORT = ["good"]
VARIED = [  # five texts of different lengths: padding inside the batch
    "a superb film",
    "the plot was dull and the acting was tedious",
    "wonderful",
    "this movie is really quite lovely and so charming",
    "awful ending",
]


@pytest.fixture(scope="module")
def text_runs(tiny_bert_dir, tiny_csv, tmp_path_factory) -> dict[str, tsuika.Run]:
    """A LoRA classifier whose adapters moved the weights (adapter lr 0.05); a multi-task
    classifier and a regression, both with MLP heads (the regression with cls pooling)."""
    output = tmp_path_factory.mktemp("export-runs")
    table = text_table(output / "table.csv")
    settings = {
        "lora": dict(method="lora", adapter={"lr": 0.05}),
        "multi-task": dict(
            data={"train": str(table), "label_column": ["label", "topic"]},
            head={"type": "mlp"},
            train={"epochs": 2},
        ),
        "regression": dict(
            task="regression",
            data={"train": str(table), "label_column": "score"},
            head={"type": "mlp", "pooling": "cls"},
            train={"epochs": 2},
        ),
    }
    return {
        name: tsuika.train(fast_config(tiny_bert_dir, tiny_csv, output, name=name, **extra))
        for name, extra in settings.items()
    }


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> tsuika.Run:
    """LoRA on the tiny CNN's convolutions, trained hard enough to move them."""
    register_tiny_models()
    root = tmp_path_factory.mktemp("export-images")
    table = colour_table(root / "img", 48)
    return tsuika.train(
        model=TINY_CNN,
        method="lora",
        data={"train": str(table)},
        output=str(root / "runs"),
        progress=False,
        train={"epochs": 2, "batch_size": 8},
        adapter={"lr": 0.05},
        baselines={"scratch": False, "bootstrap": 100},
    )


def torch_outputs(run: tsuika.Run, state: dict) -> np.ndarray:
    """The run's own outputs in PyTorch: logits, or predictions in the target's unit [B, 1]."""
    with torch.no_grad():
        outputs = run.model(state)
    if run.task.name == "regression":
        return run.task.value(outputs).numpy()[:, None]
    return outputs["logits"].numpy()


def assert_close(got: np.ndarray, expected: np.ndarray, tolerance: float) -> None:
    """Within `tolerance` per unit of output scale (the largest |output|, at least 1), the
    rule the export itself applies: float32 sums in another order differ in proportion."""
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, atol=tolerance * scale, rtol=0)


def readme_code(folder: Path) -> str:
    """The README's Python block: what a user copies."""
    return re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)


def run_readme(folder: Path, monkeypatch, **given) -> dict:
    """Execute the README's code as a user would, from the folder's parent directory."""
    code = readme_code(folder)
    assert "tsuika" not in code
    monkeypatch.chdir(folder.parent)
    namespace = dict(given)
    exec(compile(code, str(folder / "README.md"), "exec"), namespace)
    return namespace


# -- ONNX ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lora", "regression"])
def test_onnx_of_a_tiny_bert_matches_pytorch(text_runs, name, tmp_path):
    folder = export(text_runs[name].path, "onnx", tmp_path / "onnx")
    graph = onnx.load(str(folder / "model.onnx"))
    assert graph.opset_import[0].version >= 17
    assert not [i.name for i in graph.graph.initializer if "lora" in i.name]  # merged
    for given in graph.graph.input:
        assert [d.dim_param for d in given.type.tensor_type.shape.dim] == ["batch", "sequence"]
    session = onnxruntime.InferenceSession(
        str(folder / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [given.name for given in graph.graph.input]
    run = tsuika.load(text_runs[name].path)  # adapters not merged: the run as it trained
    lengths = set()
    for texts in (SHORT, VARIED):
        state = run.model.preprocess.collate(run.model.preprocess.encode(texts))
        got = session.run(None, {n: state[n].numpy() for n in names})[0]
        # Measured 2026-11-30: ≤ 1.1e-7 (lora, logits ≤ 0.3), ≤ 4.8e-7 (regression, ≤ 2.2).
        assert_close(got, torch_outputs(run, state), 1e-4)
        lengths.add(state["input_ids"].shape[1])
    assert len(lengths) == 2
    described = json.loads((folder / "export.json").read_text())
    assert described["check"]["max_abs_diff"] < 1e-5
    assert (folder / "tokenizer.json").is_file()


def test_the_onnx_graph_holds_the_trained_adapters(text_runs):
    """The LoRA run's adapters did move the outputs, so matching it means they are merged."""
    run = tsuika.load(text_runs["lora"].path)
    state = run.model.preprocess.collate(run.model.preprocess.encode(VARIED))
    with run.model.adapters.disable_adapter():
        base = torch_outputs(run, state)
    assert np.abs(base - torch_outputs(run, state)).max() > 1e-3


def test_onnx_of_a_tiny_cnn_matches_pytorch(image_run, tmp_path):
    folder = export(image_run.path, "onnx", tmp_path / "onnx")
    graph = onnx.load(str(folder / "model.onnx"))
    assert not [i.name for i in graph.graph.initializer if "lora" in i.name]
    session = onnxruntime.InferenceSession(
        str(folder / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    run = tsuika.load(image_run.path)
    generator = torch.Generator().manual_seed(3)
    for batch in (1, 5):
        pixels = torch.randn(batch, 3, 16, 16, generator=generator)
        got = session.run(None, {"pixels": pixels.numpy()})[0]
        # Measured 2026-11-30: ≤ 4.8e-7.
        assert_close(got, torch_outputs(run, {"pixels": pixels}), 1e-4)
    with run.model.adapters.disable_adapter():
        base = torch_outputs(run, {"pixels": pixels})
    assert np.abs(base - got).max() > 1e-3  # the trained adapters are in the graph


def test_onnx_readme_code_predicts_as_the_run(text_runs, image_run, tmp_path, monkeypatch):
    folder = export(text_runs["lora"].path, "onnx", tmp_path / "text")
    assert run_readme(folder, monkeypatch)["predict"](VARIED) == text_runs["lora"].predict(VARIED)
    folder = export(image_run.path, "onnx", tmp_path / "image")
    paths = sorted((image_run.path.parent.parent / "img").glob("*.png"))[:12]
    assert run_readme(folder, monkeypatch)["predict"](paths) == image_run.predict(paths)


def test_int8_is_written_and_measured_via_the_command(image_run, tmp_path, capsys):
    out = tmp_path / "int8"
    assert (
        main(["export", str(image_run.path), "--format", "onnx", "--int8", "--out", str(out)]) == 0
    )
    assert (out / "model.int8.onnx").is_file()
    int8 = json.loads((out / "export.json").read_text())["int8"]
    # Measured: differences ≤ 0.019 on outputs up to 4.4 (2026-11-30, AVX-512 VNNI, 8-bit
    # weights); 0.545 on an AVX2 EPYC without VNNI (2026-12-05, saturated), 0.025 there with
    # 7-bit weights (2026-12-06). Since 2026-12-07 the weights are uint8: ONNX Runtime's u8u8
    # kernels sum integer products exactly on every x86 CPU (no 16-bit saturation), so the
    # figures here (AVX-512 VNNI: 4 validation and 9 test images, not one answer changed) are
    # expected there too; not yet measured on the AVX2 kind.
    assert 0 < int8["max_abs_diff_vs_fp32"] < 0.2  # quantised (it moved), yet close
    assert int8["top_class_agreement"] >= 5 / 6
    assert int8["quantised_ops"] == ["MatMul", "Gemm"]  # convolutions stay float32
    # Judged by the run's own metric on its own validation and test examples (issue 33).
    check = int8["task"]
    assert check["kept"] and check["metric"] == "accuracy"
    assert set(check["splits"]) == {"validation", "test"}
    for split in check["splits"].values():
        assert split["loss"] <= split["allowed"] == 0.01
        assert 0 <= split["int8"]["accuracy"] <= 1 and "macro_f1" in split["fp32"]
    assert "weights in int8" in (out / "README.md").read_text()
    printed = capsys.readouterr().out
    assert (
        f"exported: {out}" in printed
        and "int8: kept; accuracy float32 → int8: validation" in printed
    )


def test_an_int8_copy_that_loses_accuracy_is_not_kept(image_run, tmp_path, capsys, monkeypatch):
    """Exit 2, one line with the figures; the float32 export stays complete."""
    import tsuika.export.int8_check as int8_check

    monkeypatch.setattr(int8_check, "INT8_TOLERANCE", -1.0)  # any copy "loses too much"
    out = tmp_path / "int8"
    args = ["export", str(image_run.path), "--format", "onnx", "--int8", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the int8 copy loses" in err and "accuracy on the" in err and str(out) in err
    assert (out / "model.onnx").is_file() and not (out / "model.int8.onnx").exists()
    described = json.loads((out / "export.json").read_text())
    assert described["int8"]["file"] is None and not described["int8"]["task"]["kept"]
    assert "model.int8.onnx" not in (out / "README.md").read_text()
    accepted = tmp_path / "accepted"
    args = ["export", str(image_run.path), "--format", "onnx", "--int8", "--out", str(accepted)]
    assert main([*args, "--int8-tolerance", "1"]) == 0
    assert (accepted / "model.int8.onnx").is_file()
    assert main([*args[:-1], str(tmp_path / "x"), "--int8-tolerance", "2"]) == 2


def test_an_int8_copy_without_the_run_s_data_is_kept_and_says_so(tmp_path, capsys):
    register_tiny_models()
    table = colour_table(tmp_path / "img", 48)
    settings = dict(model=TINY_CNN, method="transfer", progress=False, report=False)
    run = tsuika.train(data={"train": str(table)}, output=str(tmp_path / "runs"), **settings)
    table.unlink()  # the data moved since the run
    out = tmp_path / "int8"
    assert main(["export", str(run.path), "--format", "onnx", "--int8", "--out", str(out)]) == 0
    assert (out / "model.int8.onnx").is_file()
    assert "its task metric not measured: the run's data could not be read again" in (
        capsys.readouterr().out
    )


# -- hf ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lora", "multi-task", "regression"])
def test_hf_text_export_reproduces_the_run_without_tsuika(text_runs, name, tmp_path, monkeypatch):
    run = text_runs[name]
    folder = export(run.path, "hf", tmp_path / "hf")
    assert {"config.json", "model.safetensors", "head.safetensors", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    namespace = run_readme(folder, monkeypatch)
    with torch.no_grad():
        theirs = namespace["outputs"](VARIED).numpy()
    ours = torch_outputs(run, run.model.preprocess.collate(run.model.preprocess.encode(VARIED)))
    # Measured 2026-11-30: ≤ 1.2e-7 (lora), ≤ 4.8e-7 (multi-task), ≤ 2.4e-7 (regression).
    assert_close(theirs, ours, 1e-5)
    predicted = namespace["predict"](VARIED)
    if name == "regression":
        assert_close(np.array(predicted), np.array(run.predict(VARIED)), 1e-5)
    else:
        assert predicted == run.predict(VARIED)


def test_hf_image_export_loads_into_the_plain_module(image_run, tmp_path, monkeypatch):
    """The registered module, built by its own code, loads model.safetensors and predicts as
    the run does from the image files."""
    folder = export(image_run.path, "hf", tmp_path / "hf")
    namespace = run_readme(folder, monkeypatch, make_module=TinyCNN)
    paths = sorted((image_run.path.parent.parent / "img").glob("*.png"))[:12]
    assert namespace["predict"](paths) == image_run.predict([str(p) for p in paths])
    with torch.no_grad():
        theirs = namespace["outputs"](paths).numpy()
    ours = image_run.outputs([str(p) for p in paths])["logits"].numpy()
    # Measured 2026-11-30: ≤ 7.6e-6 on logits up to 55 (1.4e-7 of the scale): tsuika runs
    # channels-last batches through unmerged LoRA, the plain module contiguous merged ones.
    assert_close(theirs, ours, 1e-5)
    described = json.loads((folder / "export.json").read_text())
    assert described["weights"]["classifier"] == "fc"
    assert described["image"]["size"] == 16


# -- the model card ------------------------------------------------------------------------
def test_every_export_has_a_model_card(text_runs, tmp_path):
    run = text_runs["lora"]
    folder = export(run.path, "onnx")
    assert folder == run.path / "export-onnx"
    card = (folder / "README.md").read_text()
    assert card.startswith("# lora: classify, lora on ")
    for expected in ("## Base model", "- licence: unknown", "## Method", "accuracy", "macro_f1"):
        assert expected in card
    assert "the user's data" in card and "28 training, 4 validation and 8 test" in card
    assert "logistic regression on TF-IDF n-grams" in card  # a baseline, with its gain
    for verdict in run.summary["verdicts"].values():
        assert verdict["text"] in card
    assert "## Intended use and limits" in card and "## Export check" in card
    interval = re.search(r"\| accuracy \| [\d.]+ \| \[([\d.]+), ([\d.]+)\] \|", card)
    assert interval and float(interval[1]) <= run.summary["test"]["accuracy"] <= float(interval[2])


def test_licences_of_bundled_models_data_and_folders(tmp_path):
    assert "Apache-2.0" in base_model({"source": "minilm-l6"})
    assert "sentence-transformers/all-MiniLM-L6-v2" in base_model({"source": "minilm-l6"})
    assert "MIT" in data_licence("bundled:fashion")
    assert "Pang and Lee" in data_licence("bundled:reviews")
    assert data_licence("my.csv") is None
    (tmp_path / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# A model\n")
    assert folder_licence(str(tmp_path)) == "mit"
    assert folder_licence(str(tmp_path / "missing")).startswith("unknown")


def test_the_card_sets_teacher_and_student_side_by_side():
    figures = {
        "teacher": {"accuracy": 0.9, "parameters": 100},
        "student": {"accuracy": 0.85, "parameters": 40},
        "speedup_batch1": 2.5,
    }
    section = distillation({"distillation": figures})
    assert "| accuracy | 0.9000 | 0.8500 |" in section
    assert "| parameters | 100 | 40 |" in section
    assert "- speedup_batch1: 2.500" in section
    assert distillation({}) == ""


# -- rules ---------------------------------------------------------------------------------
def test_export_never_overwrites(image_run, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["export", str(image_run.path), "--format", "hf", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "tflite"], "unknown export format `tflite`"),
        (["--format", "hf", "--int8"], "--int8 quantises an ONNX graph"),
        (["--format", "onnx", "--merge"], "--merge writes the hf format"),
    ],
)
def test_bad_options_exit_2(image_run, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main(["export", str(image_run.path), *argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_failed_check_leaves_no_folder(image_run, tmp_path, monkeypatch):
    monkeypatch.setattr("tsuika.export.graph.TOLERANCE", -1.0)
    with pytest.raises(TsuikaError, match="differs from tsuika's own outputs"):
        export(image_run.path, "onnx", tmp_path / "onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_soft_prompt_is_not_merged(tiny_llama_dir, tmp_path):
    config = build_config(
        fast_config(tiny_llama_dir, tmp_path / "unused.jsonl", tmp_path, task="causal-lm")
    )
    model = model_for(config, None, model_kind="causal-lm")
    METHODS["prompt-tuning"](config, CausalLM(str(tiny_llama_dir))).prepare(model)
    with pytest.raises(TsuikaError, match="cannot be merged"):
        merge_adapters(model)
