"""LoRA on a causal language model, tsuika against TRL's `SFTTrainer`, in one run:
SmolLM2-135M-Instruct (`smollm2-135m`) on the bundled instructions, the same PEFT LoRA config
(r=8, alpha=16, dropout 0.05, all-linear), data, steps, batch, rate and schedule on both sides.

    python bench/lora_lm.py [--train-rows 320] [--lr 5e-4] [--seed 0]

Needs the `bench` extra (`pip install "trl>=1.0" "datasets>=3"`). Each side runs in its own
process (this script again, with `--side`), one after the other, so its memory is its own.

What is the same: a fixed subset of train.jsonl (seed 0), 32 other train.jsonl rows as
validation, 1 epoch at batch 8, AdamW (betas 0.9/0.999, weight decay 0), clip 1.0, rate
`--lr` with tsuika's schedule on both sides (linear warmup over int(0.06 × steps) steps, then
cosine to 0: TRL gets it through `create_scheduler`, since transformers' own cosine starts its
warmup at 0 and rounds the warmup up), max length 128, loss on completion tokens only (mean per
token of each batch), fp32, no gradient checkpointing (TRL's default is on; tsuika has none),
2 CPU threads. Prompts go through the tokenizer's chat template on both sides: tsuika's
`lm.template: auto`; TRL's conversational prompt-completion rows. TRL's completion keeps the
template's newline after `<|im_end|>`, one more learned token per example than tsuika's.
What differs, by design of each tool: tsuika draws length-bucketed batches, TRL random ones
(so TRL pads more; the padding share is printed), and TRL's loss uses transformers'
fused LM head (no full logits in training).

How each figure is measured:
- train s: wall time of training alone. tsuika: its `fit` call (timed around
  `tsuika.train.loop.fit`) minus the validation pass it runs at the end of the epoch (its
  `evaluate` calls inside `fit`, timed); TRL: `trainer.train()` with evaluation and saving
  off. Both include their optimizer and accelerator setup; neither includes loading the model
  or tokenising the data.
- tokens: the non-pad input tokens (prompt and completion) of every training batch, counted
  as the batches enter the step; tokens/s = tokens / train s. tsuika's own summary figure,
  which keeps the validation pass in the time, is printed beside it.
- val loss: mean cross-entropy per completion token on the 32 validation rows, eval mode,
  after training, on tsuika's tokens (TRL: `trainer.evaluate` on the same token ids and
  completion masks, one batch of 32); TRL on its own tokenisation (with the extra newline
  token) in brackets. Base: the same before training.
- peak RSS: `ru_maxrss` of each side's process (tsuika's also runs the base model and the
  adapted model over the 300 test prompts; TRL's the exact-match check below), and the peak
  during training alone (Linux VmHWM, reset through /proc/self/clear_refs just before).
- exact match: greedy decoding reproduces the completion, shown by one teacher-forced pass
  (tsuika's test metric) on the 300 test.jsonl prompts; the gain and its 95 % bootstrap
  interval are tsuika's (1,000 resamples). TRL's adapted model gets the same check.
- adapter: bytes of the saved PEFT folder (`save_pretrained`); trainable: parameters with
  gradients.
- CPU: cores each side used while training, and cores other processes used meanwhile
  (/proc/stat); on 2 cores another job slows a 2-thread run several-fold, so the script warns
  when others used more than 0.1 core.

tsuika's training is timed and counted by wrapping three of its functions in the child process
(`tsuika.train.phase.fit`, `CausalLM.evaluate`, `Method.step`); its source is not changed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

# Benches time cold runs: no frozen pass is read from the activation store.
os.environ.setdefault("TSUIKA_ACTIVATIONS", "off")


DATA = Path(__file__).resolve().parents[1] / "src" / "tsuika" / "data" / "bundled" / "instructions"
R, ALPHA, DROPOUT = 8, 16, 0.05
BATCH, MAX_LENGTH, WARMUP = 8, 128, 0.06
VAL_ROWS = 32


# -- memory ------------------------------------------------------------------------------------
def process_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Reset the kernel's high-water mark of this process's resident set (VmHWM)."""
    Path("/proc/self/clear_refs").write_text("5")


def window_peak_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by the whole machine (/proc/stat) and by this process."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return busy / os.sysconf("SC_CLK_TCK"), usage.ru_utime + usage.ru_stime


def cpu_share(before: tuple[float, float], seconds: float) -> dict[str, float]:
    """Cores this process used over a window of `seconds`, and cores the rest of the
    machine used meanwhile (another job on 2 cores slows a 2-thread run several-fold)."""
    machine, own = (b - a for a, b in zip(before, cpu_seconds(), strict=True))
    return {"cores": own / seconds, "others_cores": max(0.0, machine - own) / seconds}


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- tsuika ------------------------------------------------------------------------------------
def run_tsuika(args: argparse.Namespace, work: Path) -> dict:
    import importlib

    import tsuika
    from tsuika.methods.base import Method
    from tsuika.tasks.causal_lm import IGNORE, CausalLM

    # `tsuika.train` is also the API function, so the module is looked up by name.
    phase = importlib.import_module("tsuika.train.phase")
    probe = {"in_fit": False, "fit_s": 0.0, "val_s": 0.0, "steps": 0}
    probe |= {"tokens": 0, "slots": 0, "completion": 0, "rows": 0}
    fit, evaluate, step = phase.fit, CausalLM.evaluate, Method.step

    def timed_fit(*a, **k):
        reset_peak()
        probe["in_fit"], started, cpu = True, time.perf_counter(), cpu_seconds()
        try:
            return fit(*a, **k)
        finally:
            probe["fit_s"] = time.perf_counter() - started
            probe.update(cpu_share(cpu, probe["fit_s"]))
            probe["in_fit"], probe["train_peak_mb"] = False, window_peak_mb()

    def timed_evaluate(self, model, feed):
        started = time.perf_counter()
        try:
            return evaluate(self, model, feed)
        finally:
            if probe["in_fit"]:
                probe["val_s"] += time.perf_counter() - started

    def counted_step(self, model, batch):
        if probe["in_fit"]:
            mask = batch.state["attention_mask"]
            probe["steps"] += 1
            probe["tokens"] += int(mask.sum())
            probe["slots"] += mask.numel()
            probe["rows"] += len(mask)
            probe["completion"] += int((batch.targets["labels"] != IGNORE).sum())
        return step(self, model, batch)

    phase.fit, CausalLM.evaluate, Method.step = timed_fit, timed_evaluate, counted_step
    run = tsuika.train(
        model="smollm2-135m",
        task="causal-lm",
        method="lora",
        data={
            "train": str(work / "train.jsonl"),
            "validation": str(work / "validation.jsonl"),
            "test": str(work / "test.jsonl"),
        },
        adapter={"r": R, "alpha": ALPHA, "dropout": DROPOUT, "lr": args.lr},
        train={
            "epochs": 1,
            "batch_size": BATCH,
            "max_length": MAX_LENGTH,
            "patience": None,
            "warmup": WARMUP,
            "schedule": "cosine",
        },
        baselines={"bootstrap": 1000},
        output=str(work / "runs"),
        name="tsuika",
        progress=False,
        seed=args.seed,
    )
    history = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    epochs = [h for h in history if "val_loss" in h]
    return {
        **probe,
        "train_s": probe["fit_s"] - probe["val_s"],
        "val_loss": epochs[-1]["val_loss"],
        "train_loss": epochs[-1].get("train_loss"),
        "process_peak_mb": process_peak_mb(),
        "summary": run.summary,
    }


# -- TRL ---------------------------------------------------------------------------------------
def exact_matches(model, tokenizer, examples, batch: int = 16) -> list[bool]:
    """tsuika's test metric: at every completion position (end token included) the most
    likely next token is the completion's, in one teacher-forced pass."""
    import torch

    model.eval()
    right = []
    with torch.no_grad():
        for start in range(0, len(examples), batch):
            chunk = examples[start : start + batch]
            width = max(len(t.ids) for t in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, t in enumerate(chunk):
                ids[row, : len(t.ids)] = torch.tensor(t.ids)
                mask[row, : len(t.ids)] = 1
            guess = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
            for row, t in enumerate(chunk):
                wanted = ids[row, t.prompt_tokens : len(t.ids)]
                right.append(
                    bool((guess[row, t.prompt_tokens - 1 : len(t.ids) - 1] == wanted).all())
                )
    return right


def run_trl(args: argparse.Namespace, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tsuika.models.causal import example_tokens, smollm2_folder
    from tsuika.train.schedule import lr_multiplier

    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    train, val, test = (read_rows(work / f"{n}.jsonl") for n in ("train", "validation", "test"))

    def conversational(rows: list[dict]) -> Dataset:
        return Dataset.from_list(
            [
                {
                    "prompt": [{"role": "user", "content": r["prompt"]}],
                    "completion": [{"role": "assistant", "content": r["completion"]}],
                }
                for r in rows
            ]
        )

    def tsuika_tokens(rows: list[dict]) -> list:
        return [
            example_tokens(tokenizer, r["prompt"], r["completion"], True, MAX_LENGTH) for r in rows
        ]

    val_tokens = Dataset.from_list(
        [
            {
                "input_ids": list(t.ids),
                "completion_mask": [0] * t.prompt_tokens + [1] * (len(t.ids) - t.prompt_tokens),
            }
            for t in tsuika_tokens(val)
        ]
    )
    counts = {"steps": 0, "tokens": 0, "slots": 0, "completion": 0, "rows": 0}

    class Trainer(SFTTrainer):
        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                warmup = int(WARMUP * num_training_steps)
                counts["warmup_steps"] = warmup
                self.lr_scheduler = LambdaLR(
                    optimizer or self.optimizer,
                    lambda s: lr_multiplier(s, num_training_steps, warmup, "cosine"),
                )
            return self.lr_scheduler

        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs["attention_mask"]
            counts["steps"] += 1
            counts["tokens"] += int(mask.sum())
            counts["slots"] += mask.numel()
            counts["rows"] += len(mask)
            counts["completion"] += int((inputs["labels"] != -100).sum())
            return super().training_step(model, inputs, num_items_in_batch)

    config = SFTConfig(
        output_dir=str(work / "trl-output"),
        num_train_epochs=1,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=VAL_ROWS,
        learning_rate=args.lr,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        max_length=MAX_LENGTH,
        completion_only_loss=True,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=True,
        model_init_kwargs={"dtype": torch.float32},
        eval_strategy="no",
        save_strategy="no",
        logging_steps=10,
        disable_tqdm=True,
        report_to=[],
        seed=args.seed,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=str(folder),
        args=config,
        train_dataset=conversational(train),
        eval_dataset={"tokens": val_tokens, "own": conversational(val)},
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=R,
            lora_alpha=ALPHA,
            lora_dropout=DROPOUT,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    before = trainer.evaluate()
    reset_peak()
    started, cpu = time.perf_counter(), cpu_seconds()
    trainer.train()
    train_s = time.perf_counter() - started
    counts |= cpu_share(cpu, train_s)
    train_peak = window_peak_mb()
    after = trainer.evaluate()
    adapter = work / "trl-adapter"
    trainer.model.save_pretrained(str(adapter))
    test_right = exact_matches(trainer.model, tokenizer, tsuika_tokens(test))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        **counts,
        "train_s": train_s,
        "train_peak_mb": train_peak,
        "trl_counted_tokens": int(getattr(trainer, "_total_train_tokens", -1)),
        "dataset_tokens": sum(len(x) for x in trainer.train_dataset["input_ids"]),
        "base_val_loss": before["eval_tokens_loss"],
        "base_val_loss_own": before["eval_own_loss"],
        "val_loss": after["eval_tokens_loss"],
        "val_loss_own": after["eval_own_loss"],
        "train_losses": losses,
        "exact_match": sum(test_right) / len(test_right),
        "adapter_bytes": folder_bytes(adapter),
        "trainable": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "dtype": str(next(trainer.model.parameters()).dtype),
        "process_peak_mb": process_peak_mb(),
    }


# -- the comparison ----------------------------------------------------------------------------
def prepare(work: Path, train_rows: int) -> None:
    rows = read_rows(DATA / "train.jsonl")
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    chosen = {
        "train": [rows[i] for i in order[:train_rows]],
        "validation": [rows[i] for i in order[train_rows : train_rows + VAL_ROWS]],
        "test": read_rows(DATA / "test.jsonl"),
    }
    for name, part in chosen.items():
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))


def side(name: str, args: argparse.Namespace, work: Path) -> dict:
    started = time.perf_counter()
    log = work / f"{name}.log"
    command = [sys.executable, __file__, "--side", name, "--work", str(work), "--lr", str(args.lr)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        sys.exit(f"the {name} side failed (exit {done.returncode}); its log:\n{log.read_text()}")
    result = json.loads((work / f"{name}.json").read_text())
    result["process_s"] = time.perf_counter() - started
    return result


def report(args: argparse.Namespace, ts: dict, trl: dict, seconds: float) -> None:
    s = ts["summary"]
    base = s["baselines"]["base"]
    gain = base["gain"]
    rows = {"tsuika": ts, "TRL": trl}
    ts["adapter_bytes"] = s["disk"]["adapter_bytes"]
    ts["trainable"] = s["parameters"]["trained"]
    print(
        f"{'side':7s} {'steps':>5s} {'train s':>8s} {'tokens':>7s} {'tok/row':>7s} "
        f"{'compl/row':>9s} {'pad %':>5s} {'tokens/s':>8s} {'val loss':>8s} "
        f"{'peak MB train':>13s} {'peak MB proc':>12s} {'adapter KB':>10s} {'trainable':>10s}"
    )
    for label, r in rows.items():
        own = f" ({r['val_loss_own']:.3f})" if "val_loss_own" in r else ""
        print(
            f"{label:7s} {r['steps']:5d} {r['train_s']:8.1f} {r['tokens']:7d} "
            f"{r['tokens'] / r['rows']:7.1f} {r['completion'] / r['rows']:9.2f} "
            f"{100 * (1 - r['tokens'] / r['slots']):5.1f} {r['tokens'] / r['train_s']:8.1f} "
            f"{r['val_loss']:8.3f}{own} {r['train_peak_mb']:13.0f} {r['process_peak_mb']:12.0f} "
            f"{r['adapter_bytes'] / 1024:10.0f} {r['trainable']:10,d}"
        )
    speed = (ts["tokens"] / ts["train_s"]) / (trl["tokens"] / trl["train_s"])
    print(
        f"tsuika / TRL: tokens/s {speed:.2f} (target ≥ 1.0); peak RSS in training "
        f"{ts['train_peak_mb'] / trl['train_peak_mb']:.2f}, whole process "
        f"{ts['process_peak_mb'] / trl['process_peak_mb']:.2f}"
    )
    slots = (ts["slots"] / ts["train_s"]) / (trl["slots"] / trl["train_s"])
    print(
        f"positions/s counting padding too: tsuika {ts['slots'] / ts['train_s']:.1f}, TRL "
        f"{trl['slots'] / trl['train_s']:.1f} (ratio {slots:.2f})"
    )
    print(
        f"CPU during training: tsuika used {ts['cores']:.2f} cores, other processes "
        f"{ts['others_cores']:.2f}; TRL used {trl['cores']:.2f}, other processes "
        f"{trl['others_cores']:.2f} (of {os.cpu_count()})"
    )
    if max(ts["others_cores"], trl["others_cores"]) > 0.1:
        print("WARNING: other processes ran during training; the speed figures are not clean")
    throughput = s.get("throughput", {})
    print(
        f"tsuika fit {ts['fit_s']:.1f} s = training {ts['train_s']:.1f} s + validation pass "
        f"{ts['val_s']:.1f} s; tsuika's own figure (fit time, validation included): "
        f"{throughput.get('tokens_per_second', float('nan')):.1f} tokens/s over "
        f"{throughput.get('training_tokens', 0)} tokens; warmup {trl.get('warmup_steps')} steps"
    )
    print(
        f"val loss per completion token, 32 rows on tsuika's tokens: base "
        f"{base['validation']['loss']:.3f} (TRL's evaluate: {trl['base_val_loss']:.3f}) → tsuika "
        f"{ts['val_loss']:.3f}, TRL {trl['val_loss']:.3f}; TRL on its own tokens "
        f"{trl['base_val_loss_own']:.3f} → {trl['val_loss_own']:.3f}"
    )
    print(
        f"exact match, 300 test prompts: base {base['exact_match']:.3f} → tsuika "
        f"{s['test']['exact_match']:.3f}, gain {100 * gain['gain']:+.1f} points "
        f"(95% CI {100 * gain['low']:+.1f} to {100 * gain['high']:+.1f}; target: excludes 0); "
        f"TRL's adapter {trl['exact_match']:.3f}"
    )
    print(f"verdict: {s['verdicts']['transfer']['text']}")
    timings = s["timings"]
    print(
        f"processes: tsuika {ts['process_s']:.0f} s (fit {timings['fit']:.0f}, test "
        f"{timings['test']:.0f}, baselines {timings['baselines']:.0f}, run total "
        f"{timings['total']:.0f}), TRL {trl['process_s']:.0f} s; whole bench {seconds:.0f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-rows", type=int, default=320)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0, help="LoRA init and batch order")
    parser.add_argument("--side", choices=["tsuika", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        result = (run_tsuika if args.side == "tsuika" else run_trl)(args, args.work)
        (args.work / f"{args.side}.json").write_text(json.dumps(result, default=str))
        return
    import torch

    started = time.perf_counter()
    print(
        f"# bench/lora_lm.py · {time.strftime('%Y-%m-%d')} · {platform.machine()} · "
        f"torch {version('torch')} · transformers {version('transformers')} · peft "
        f"{version('peft')} · trl {version('trl')} · {torch.get_num_threads()} threads"
    )
    print(
        f"# smollm2-135m LoRA r={R} alpha={ALPHA} dropout {DROPOUT} all-linear · "
        f"{args.train_rows} train rows (seed 0), {VAL_ROWS} validation, 300 test · batch {BATCH}, "
        f"1 epoch, lr {args.lr:g} cosine, warmup {WARMUP}, max length {MAX_LENGTH}, "
        "completion-only loss"
    )
    work = Path(tempfile.mkdtemp(prefix="lora-lm-"))
    prepare(work, args.train_rows)
    ts = side("tsuika", args, work)
    trl = side("trl", args, work)
    report(args, ts, trl, time.perf_counter() - started)
    shutil.rmtree(work, ignore_errors=True)  # kept when a side fails: its log is there


if __name__ == "__main__":
    main()
