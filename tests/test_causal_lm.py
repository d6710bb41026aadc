"""The causal-LM task on a tiny Llama built in code: tokens and the completion-only loss
(checked by hand), the staged model against transformers' own forward, exact match against
real greedy generation, adapters that plain PEFT loads, merged exports that plain transformers
loads, and the run's summary, predictions and bad-input messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from builders import chat_rows
from helpers import fast_config
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

import tsuika
from tsuika.cli import main
from tsuika.config import build_config
from tsuika.data.chat import read_chat_examples
from tsuika.errors import TsuikaError
from tsuika.export import export_merged
from tsuika.feed import input_feed
from tsuika.methods import METHODS
from tsuika.models import model_for
from tsuika.models.causal import Decoding, example_tokens, generate, load_causal_model
from tsuika.tasks import CausalLM
from tsuika.tasks.causal_lm import IGNORE


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def lm_config(folder: Path, data: Path, output: Path, **overrides) -> dict:
    config = fast_config(folder, data, output, task="causal-lm", method="lora")
    config["adapter"] = {"lr": 0.05}
    config["train"] = {"epochs": 3, "batch_size": 8, "lr": 0.01, "patience": None}
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


@pytest.fixture
def chat_file(tmp_path: Path) -> Path:
    return jsonl(tmp_path / "chat.jsonl", chat_rows(40))


# -- tokens and the loss -------------------------------------------------------------------
def test_completion_only_labels_by_hand(tiny_llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokens = example_tokens(tokenizer, "say pos : good", "pos", chat=True, max_length=64)
    words = tokenizer.convert_ids_to_tokens(list(tokens.ids))
    # The ChatML conversation, cut after the answer's end-of-turn token (the template's
    # trailing newline is never generated, so it is not learned).
    assert words == [
        "<|im_start|>", "user", "say", "pos", ":", "good", "<|im_end|>",
        "<|im_start|>", "assistant", "pos", "<|im_end|>",
    ]  # fmt: skip
    assert tokens.prompt_tokens == 9
    task = CausalLM(str(tiny_llama_dir))
    labels = task.labels(type("E", (), {"inputs": [tokens]})())
    assert labels.tolist() == [[IGNORE] * 9 + list(tokens.ids[9:])]
    assert task.units(type("E", (), {"inputs": [tokens]})()) == [2.0]


def test_loss_is_the_mean_over_completion_tokens_only(tiny_llama_dir):
    task = CausalLM(str(tiny_llama_dir))
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, IGNORE], [IGNORE, 1, 2, 6, 5]])
    # By hand: position t predicts labels[t + 1]; learned targets are (0,1→3), (0,2→4),
    # (1,0→1), (1,1→2), (1,2→6), (1,3→5).
    picks = [(0, 1, 3), (0, 2, 4), (1, 0, 1), (1, 1, 2), (1, 2, 6), (1, 3, 5)]
    by_hand = [-torch.log_softmax(logits[b, t], -1)[y] for b, t, y in picks]
    loss = task.loss({"logits": logits}, {"labels": labels})
    torch.testing.assert_close(loss, torch.stack(by_hand).mean())
    per_example = task.losses({"logits": logits}, {"labels": labels})
    torch.testing.assert_close(per_example[0], torch.stack(by_hand[:2]).mean())
    sums = task.sums({"logits": logits}, {"labels": labels})
    assert sums["tokens"] == 6 and sums["n"] == 2


def test_plain_template_is_prompt_then_completion_then_eos(tiny_llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokens = example_tokens(tokenizer, "say pos : good", "pos", chat=False, max_length=64)
    words = tokenizer.convert_ids_to_tokens(list(tokens.ids))
    assert words == ["say", "pos", ":", "good", "pos", "<|im_end|>"]
    assert tokens.prompt_tokens == 4


def test_too_long_examples_keep_the_completion(tiny_llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    prompt = " ".join(["good"] * 40)
    tokens = example_tokens(tokenizer, prompt, "pos", chat=True, max_length=16)
    assert len(tokens.ids) == 16
    assert tokenizer.convert_ids_to_tokens(list(tokens.ids[-2:])) == ["pos", "<|im_end|>"]


# -- the staged model ----------------------------------------------------------------------
def test_staged_forward_equals_the_library_forward(tiny_llama_dir):
    model = load_causal_model(tiny_llama_dir, str(tiny_llama_dir), 64, "auto").eval()
    assert model.stage_names == ["embeddings", "block1", "block2", "block3", "head"]
    # Tied LM head: one tensor, in the embeddings group only.
    assert sum(p.numel() for p in model.head.parameters()) == 32
    items = model.preprocess.encode(["say pos : good movie", "bad", "a dull and boring film"])
    state = model.preprocess.collate(items)
    with torch.no_grad():
        staged = model(state)["logits"]
        library = model.library(
            input_ids=state["input_ids"], attention_mask=state["attention_mask"]
        ).logits
    real = state["attention_mask"].bool()
    # Measured 2026-11-30: 0.0 (the same operations in the same order).
    torch.testing.assert_close(staged[real], library[real], atol=1e-6, rtol=0)


def test_exact_match_is_what_greedy_generation_gives(tiny_llama_dir, chat_file, tmp_path):
    """Teacher-forced exact match (one pass) ⇔ greedy generation reproduces the completion."""
    run = tsuika.train(
        lm_config(
            tiny_llama_dir,
            chat_file,
            tmp_path / "runs",
            method="finetune",
            train={"epochs": 12, "backbone_lr": 0.01},
        )
    )
    examples = read_chat_examples(str(chat_file), "train")
    task = run.task
    encoded = task.encode(examples)
    feed = input_feed(run.model, encoded.inputs, task.targets(encoded))
    exact = task.per_example(task.truth(encoded), task.predictions(task.gather(run.model, feed)))
    answers = generate(run.model, examples.inputs, Decoding(max_new_tokens=4))
    generated = [a == c for a, c in zip(answers, examples.targets["completion"], strict=True)]
    assert 0 < sum(generated) < len(generated) or all(generated)  # learned something
    assert [bool(e) for e in exact] == generated


# -- adapters and exports ------------------------------------------------------------------
@pytest.mark.parametrize("method", ["lora", "dora", "ia3", "prompt-tuning"])
def test_a_fresh_adapter_leaves_the_logits_unchanged(method, tiny_llama_dir, chat_file):
    """LoRA's B starts at 0, IA³'s scales at 1, DoRA's magnitude at ‖W‖: the base model; a
    soft prompt changes the outputs, and `unadapted` gives the base model back."""
    config = build_config(lm_config(tiny_llama_dir, chat_file, Path("unused"), method=method))
    model = model_for(config, None, model_kind="causal-lm").eval()
    trainer = METHODS[method](config, CausalLM(str(tiny_llama_dir)))
    state = model.preprocess.collate(model.preprocess.encode(["say pos : good", "bad awful"]))
    with torch.no_grad():
        before = model(state)["logits"]
        trainer.prepare(model)
        after = model(state)["logits"]
        with trainer.unadapted(model):
            unadapted = model(state)["logits"]
    real = state["attention_mask"].bool()
    # Measured 2026-11-30: 0.0 for lora and ia3, ≤ 1.2e-7 for dora.
    torch.testing.assert_close(unadapted[real], before[real], atol=1e-6, rtol=0)
    if method == "prompt-tuning":
        assert not torch.allclose(after[real], before[real])
    else:
        torch.testing.assert_close(after[real], before[real], atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_adapter_loads_in_plain_peft_and_merges_within_1e5(
    method, tiny_llama_dir, chat_file, tmp_path
):
    run = tsuika.train(lm_config(tiny_llama_dir, chat_file, tmp_path / "runs", method=method))
    adapter = run.path / "model" / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    batch = tokenizer(["say pos : good movie", "bad awful"], return_tensors="pt", padding=True)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), adapter)
    with torch.no_grad():
        theirs = plain.eval()(**batch).logits
        ours = run.model(dict(batch))["logits"]
    real = batch["attention_mask"].bool()
    # Measured 2026-11-30: 0.0 (lora), ≤ 3e-7 (dora, ia3).
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=0)

    merged_dir = export_merged(run.path, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert not any("lora" in name or "ia3" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        folded = merged(**batch).logits
    torch.testing.assert_close(folded[real], theirs[real], atol=1e-5, rtol=0)
    with pytest.raises(TsuikaError, match="already exists"):
        export_merged(run.path, merged_dir)


def test_soft_prompt_loads_in_plain_peft(tiny_llama_dir, chat_file, tmp_path):
    run = tsuika.train(
        lm_config(tiny_llama_dir, chat_file, tmp_path / "runs", method="prompt-tuning")
    )
    trained = [n for n, p in run.model.named_parameters() if p.requires_grad]
    assert trained == ["stages.0.prompt.encoder.embedding.weight"]
    adapter = run.path / "model" / "adapter"
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), adapter)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    batch = tokenizer(["say pos : good movie", "bad awful"], return_tensors="pt", padding=True)
    with torch.no_grad():
        theirs = plain.eval()(**batch).logits[:, 20:]  # after the 20 virtual tokens
        ours = run.model(dict(batch))["logits"]
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=0)


def test_soft_prompt_generation_follows_the_staged_model(tiny_llama_dir, chat_file, tmp_path):
    """PEFT's generate (virtual tokens placed by PEFT) starts with the token the staged model
    (virtual tokens placed by tsuika) finds most likely."""
    run = tsuika.train(
        lm_config(tiny_llama_dir, chat_file, tmp_path / "runs", method="prompt-tuning")
    )
    prompts = [row["prompt"] for row in chat_rows(8, seed=3)]
    first = generate(run.model, prompts, Decoding(max_new_tokens=1))
    likely = run.outputs(prompts)["next_token_logits"].argmax(-1)
    tokenizer = run.model.preprocess.tokenizer
    expected = [tokenizer.decode([int(t)], skip_special_tokens=True).strip() for t in likely]
    assert first == expected


def test_prompt_tuning_is_for_language_models_only(base_config):
    with pytest.raises(TsuikaError, match="prompt-tuning adapts causal-lm models"):
        tsuika.train(base_config, method="prompt-tuning")


def test_full_finetune_exports_the_trained_network(tiny_llama_dir, chat_file, tmp_path):
    run = tsuika.train(lm_config(tiny_llama_dir, chat_file, tmp_path / "runs", method="finetune"))
    folder = export_merged(run.path, tmp_path / "hf")
    exported = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(["say pos : good movie"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(
            exported(**batch).logits, run.model(dict(batch))["logits"], atol=1e-5, rtol=0
        )


def test_top_block_adapters_cache_the_prefix_and_match_no_cache(
    tiny_llama_dir, chat_file, tmp_path
):
    config = build_config(lm_config(tiny_llama_dir, chat_file, tmp_path, adapter={"blocks": 1}))
    task = CausalLM(str(tiny_llama_dir))
    model = model_for(config, None, model_kind="causal-lm")
    method = METHODS["lora"](config, task)
    method.prepare(model)
    assert method.cache_boundary(model) == model.stage_names.index("block3")
    cached = tsuika.train(
        lm_config(tiny_llama_dir, chat_file, tmp_path / "a", adapter={"blocks": 1})
    )
    plain = tsuika.train(
        lm_config(
            tiny_llama_dir, chat_file, tmp_path / "b", adapter={"blocks": 1}, train={"cache": "off"}
        )
    )
    assert cached.summary["timings"]["cache"] > 0 and "cache" not in plain.summary["timings"]
    assert cached.summary["test"] == plain.summary["test"]


# -- the run -------------------------------------------------------------------------------
def test_run_summary_compares_with_the_base_model(tiny_llama_dir, chat_file, tmp_path):
    run = tsuika.train(lm_config(tiny_llama_dir, chat_file, tmp_path / "runs", report=True))
    summary = run.summary
    assert summary["task"] == "causal-lm" and summary["selection"]["metric"] == "exact_match"
    assert set(summary["test"]) == {"exact_match", "token_accuracy", "loss", "perplexity"}
    base = summary["baselines"]["base"]
    assert base["title"] == "the pretrained model before adaptation"
    assert set(base["validation"]) >= {"loss", "exact_match"}
    assert summary["gain"]["baseline"] == "base"
    assert "transfer" in summary["verdicts"]
    assert summary["throughput"]["tokens_per_second"] > 0
    assert 0 < summary["disk"]["adapter_bytes"] < summary["disk"]["model_bytes"]
    records = [json.loads(line) for line in (run.path / "predictions.jsonl").open()]
    assert len(records) == summary["data"]["test"]
    assert {r["truth"] for r in records} <= {"pos", "neg"}
    report = (run.path / "report.html").read_text()
    assert "Answers: adapted vs base" in report and "PEFT adapter" in report
    answers = tsuika.load(run.path).predict(["say pos or neg : good great", "dull"])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_the_base_baseline_equals_the_untrained_model(tiny_llama_dir, chat_file, tmp_path):
    """With nothing learned (learning rate ~0), the run and its base baseline agree."""
    run = tsuika.train(
        lm_config(
            tiny_llama_dir,
            chat_file,
            tmp_path / "runs",
            adapter={"lr": 1e-12},
            train={"epochs": 1},
        )
    )
    base = run.summary["baselines"]["base"]
    for metric in ("exact_match", "token_accuracy"):
        assert base[metric] == run.summary["test"][metric]
    assert base["loss"] == pytest.approx(run.summary["test"]["loss"], abs=1e-6)
    # Equal is no clear difference, not negative transfer (the interval is 0 to 0).
    assert run.summary["verdicts"]["transfer"]["negative_transfer"] is False
    assert run.summary["verdicts"]["transfer"]["text"].startswith("no clear difference")


def test_generate_and_predict_commands(tiny_llama_dir, chat_file, tmp_path, capsys):
    run = tsuika.train(lm_config(tiny_llama_dir, chat_file, tmp_path / "runs"))
    prompts = jsonl(tmp_path / "prompts.jsonl", [{"prompt": "say pos : good"}])
    assert main(["generate", str(run.path), "say pos : bad", "--file", str(prompts)]) == 0
    assert capsys.readouterr().out.count("\n") == 2  # one line per prompt (maybe empty)
    code = main(
        ["generate", str(run.path), "x", "--sample", "--seed", "1", "--max-new-tokens", "3"]
    )
    assert code == 0
    assert main(["predict", str(run.path), "say pos : good"]) == 0
    assert capsys.readouterr().out.strip().endswith("say pos : good")
    assert main(["export", str(run.path), "--out", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "config.json").is_file()


# -- data ----------------------------------------------------------------------------------
def test_chat_messages_are_read_as_prompt_and_answer(tmp_path):
    path = jsonl(
        tmp_path / "m.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "good?"},
                    {"role": "assistant", "content": "pos"},
                ]
            },
            {"prompt": "bad?", "completion": "neg"},
        ],
    )
    examples = read_chat_examples(str(path), "train")
    assert examples.inputs[0] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "good?"},
    ]
    assert examples.targets["completion"] == ["pos", "neg"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"text": "x"}, "line 1: needs `prompt` and `completion`"),
        ({"prompt": "x", "completion": ""}, "line 1: empty text in column `completion`"),
        ({"messages": [{"role": "user", "content": "x"}]}, "must end with the assistant"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "turn 1 of `messages` needs a role"),
        ({"prompt": 3, "completion": "x"}, "`prompt` must be a string"),
    ],
)
def test_bad_chat_rows_name_the_line_and_the_fix(tmp_path, row, message):
    path = jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(TsuikaError, match=message.replace("(", r"\(")):
        read_chat_examples(str(path), "train")


def test_a_csv_for_a_language_model_is_a_clear_error(tiny_llama_dir, tiny_csv, tmp_path, capsys):
    code = main(
        ["train", f"model={tiny_llama_dir}", "task=causal-lm", f"data.train={tiny_csv}", "--quiet"]
    )
    assert code == 2
    assert "convert the file to .jsonl" in capsys.readouterr().err


def test_an_encoder_for_a_language_model_task_is_a_clear_error(tiny_bert_dir, chat_file, capsys):
    code = main(
        ["train", f"model={tiny_bert_dir}", "task=causal-lm", f"data.train={chat_file}", "--quiet"]
    )
    assert code == 2
    assert "is not a causal language model (its config.json names BertModel)" in (
        capsys.readouterr().err.replace("\n", " ")
    )


def test_logits_at_learned_positions_only_equal_the_full_pass(tiny_llama_dir, chat_file):
    """`inputs` asks for next-token logits where a completion token follows; loss, sums and
    kept outputs equal those from the full [B, T, vocabulary] logits."""
    task = CausalLM(str(tiny_llama_dir))
    model = load_causal_model(tiny_llama_dir, str(tiny_llama_dir), 64, "auto").eval()
    examples = task.encode(read_chat_examples(str(chat_file), "train"))
    feed = input_feed(model, examples.inputs[:6], {"labels": task.labels(examples)[:6]})
    batch = feed.batch(list(range(6)))
    with torch.no_grad():
        full = model(batch.state)
        packed = model(task.inputs(batch.state, batch.targets))
    assert packed["logits"].shape[0] == sum(task.units(examples)[:6])  # completion tokens
    torch.testing.assert_close(
        task.loss(packed, batch.targets), task.loss(full, batch.targets), atol=1e-6, rtol=0
    )
    assert task.sums(packed, batch.targets) == pytest.approx(task.sums(full, batch.targets))
    for key, value in task.kept(full, batch.targets).items():
        torch.testing.assert_close(task.kept(packed, batch.targets)[key], value, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        task.losses(packed, batch.targets), task.losses(full, batch.targets), atol=1e-6, rtol=0
    )
