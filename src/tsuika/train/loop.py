"""The one training loop. Methods differ only in `prepare`, `param_groups` and `step`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator

from tsuika.config import TrainConfig
from tsuika.methods.base import Method
from tsuika.models.base import AdaptableModel
from tsuika.train.batches import sorted_batches, training_batches
from tsuika.train.feed import Feed
from tsuika.train.progress import Progress
from tsuika.train.schedule import lr_multiplier


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = 0.0
    stopped_early: bool = False
    steps: int = 0
    seconds: float = 0.0


@torch.no_grad()
def predict_probs(model: torch.nn.Module, feed: Feed, batch_size: int = 128) -> torch.Tensor:
    """Class probabilities [N, C] in the feed's order (batches run length-sorted)."""
    was_training = model.training
    model.eval()
    lengths = feed.lengths or [1] * len(feed)
    probs: list[torch.Tensor | None] = [None] * len(feed)
    for batch in feed.batches(sorted_batches(lengths, batch_size)):
        logits = model(batch.state, feed.start)["logits"].float()
        for index, row in zip(batch.indices, logits.softmax(-1), strict=True):
            probs[index] = row
    model.train(was_training)
    return torch.stack(probs)


def _val_scores(model: torch.nn.Module, val: Feed) -> tuple[float, float]:
    probs = predict_probs(model, val)
    loss = torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), val.labels).item()
    accuracy = (probs.argmax(-1) == val.labels).float().mean().item()
    return accuracy, loss


def _trainable_state(model: AdaptableModel) -> dict[str, torch.Tensor]:
    """Copies of the weights (and buffers) of the groups that train: enough to restore."""
    state = {}
    for group in model.layer_groups():
        if group.trainable:
            for key, value in group.module.state_dict().items():
                state[f"stages.{group.index}.{key}"] = value.detach().clone()
    return state


def fit(
    model: AdaptableModel,
    method: Method,
    train: Feed,
    val: Feed,
    config: TrainConfig,
    seed: int = 0,
    log: Callable[[dict], None] | None = None,
    progress: Progress | None = None,
    label: str = "training",
) -> FitResult:
    """Train `model` (already `method.prepare`d) on `train`, early-stopping on `val` accuracy
    (ties broken by validation loss), and leave it holding the best epoch's weights."""
    started = time.perf_counter()
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision="bf16" if config.bf16 else "no"
    )
    optimizer = torch.optim.AdamW(method.param_groups(model))
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    batches_per_epoch = math.ceil(len(train) / config.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum)
    total_steps = config.epochs * steps_per_epoch
    warmup = int(config.warmup * total_steps)
    wrapped, optimizer = accelerator.prepare(model, optimizer)

    result = FitResult()
    best_key = (-1.0, 0.0)
    best_state = _trainable_state(model)
    patience_left = config.patience
    task = progress.task(label, total=config.epochs) if progress else None
    step = 0
    for epoch in range(1, config.epochs + 1):
        wrapped.train()
        order = training_batches(len(train), config.batch_size, seed, epoch, train.lengths)
        loss_sum, correct, seen = 0.0, 0, 0
        for micro, batch in enumerate(train.batches(order)):
            with accelerator.autocast():
                out = method.step(wrapped, batch)
            accelerator.backward(out["loss"] / config.grad_accum)
            loss_sum += out["loss"].item() * len(batch.indices)
            correct += (out["logits"].argmax(-1) == batch.labels).sum().item()
            seen += len(batch.indices)
            if (micro + 1) % config.grad_accum == 0 or micro + 1 == len(order):
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * lr_multiplier(
                        step, total_steps, warmup, config.schedule
                    )
                if config.clip_grad_norm:
                    accelerator.clip_grad_norm_(
                        [p for g in optimizer.param_groups for p in g["params"]],
                        config.clip_grad_norm,
                    )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
        val_accuracy, val_loss = _val_scores(wrapped, val)
        record = {
            "epoch": epoch,
            "step": step,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": optimizer.param_groups[0]["lr"],
        }
        result.history.append(record)
        if log:
            log(record)
        if task is not None:
            progress.advance(task, info=f"val acc {val_accuracy:.3f}")
        key = (val_accuracy, -val_loss)
        if key > best_key:
            best_key, result.best_epoch = key, epoch
            best_state = _trainable_state(model)
            patience_left = config.patience
        elif patience_left is not None:
            patience_left -= 1
            if patience_left <= 0:
                result.stopped_early = epoch < config.epochs
                break
    model.load_state_dict(best_state, strict=False)
    result.best_val_accuracy = best_key[0]
    result.steps = step
    result.seconds = time.perf_counter() - started
    return result


__all__ = ["FitResult", "fit", "predict_probs"]
