"""The one training loop. The method says what trains and gives each step's loss; the task
turns outputs into metric sums and names the metric that selects the best epoch. The loop
never asks which method or task it runs, nor what watches it: the metrics log, progress, the
forgetting monitor and plan's pruning are hooks (`train/hooks.py`), called at five points.

Per optimizer step: micro-batches (gradient accumulation) → clip → AdamW → warmup/decay
schedule. Per epoch: validation, early stopping on the task's selection metric (ties: lower
validation loss), a checkpoint. With several processes (Accelerate/DDP, or FSDP's shards),
every global batch is split across them, so the result matches one process with the same
global batch size.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator

from tsuika.config import TrainConfig
from tsuika.feed import Feed
from tsuika.feed.batches import training_batches
from tsuika.methods.base import Method, stage_state
from tsuika.models.base import AdaptableModel
from tsuika.train.checkpoint import (
    LoopState,
    latest_checkpoint,
    load_checkpoint,
    load_counters,
    save_checkpoint,
)
from tsuika.train.hooks import FitStart, Hook, stops
from tsuika.train.schedule import lr_multiplier
from tsuika.train.sharding import gather_into, load_sharded, save_sharded, sharded_copy


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float | None = None
    """The task's selection metric on validation at the best epoch."""
    stopped_early: bool = False
    """Early stopping ended the run (patience ran out), not the epoch count."""
    stopped_by: str | None = None
    """`max_steps` or `hook` when the caller's limit or a hook ended the fit first."""
    steps: int = 0
    seconds: float = 0.0
    schedule: dict = field(default_factory=dict)
    """The learning-rate plan: `kind`, `total_steps`, `warmup_steps` and each optimizer
    group's base rate by name (`rates`); with `lr_multiplier` it gives every step's rate."""


def _trained_state(model: AdaptableModel, groups: list[int], names: set[str]) -> dict:
    """A copy of what training can change in `groups`: the parameters named in `names` and
    every buffer (BatchNorm statistics). Frozen weights inside a training group — the base
    weights under adapters — are never copied: for LoRA on every block that would be the
    whole network, at every best epoch and in every checkpoint."""
    kept = {}
    for key, value in stage_state(model, set(groups)).items():
        if key in names:
            kept[key] = value.detach().clone()
    for key, value in model.named_buffers():
        if key.startswith(tuple(f"stages.{i}." for i in groups)):
            kept[key] = value.detach().clone()
    return kept


def _add(totals: dict[str, float], sums: dict[str, float]) -> None:
    for key, value in sums.items():
        totals[key] = totals.get(key, 0.0) + value


class Loop:
    """One fit: owns the accelerator, optimizer, counters and checkpoints."""

    def __init__(
        self,
        model: AdaptableModel,
        method: Method,
        train: Feed,
        val: Feed,
        config: TrainConfig,
        seed: int,
        checkpoints: Path | None,
    ) -> None:
        self.model, self.method, self.train_feed, self.val = model, method, train, val
        self.task = method.task
        self.config, self.seed, self.checkpoints = config, seed, checkpoints
        # Mixed precision is applied with torch.autocast below, not through Accelerator:
        # Accelerate's state is per process, so a second run in the same Python session with
        # another `bf16` setting would be refused.
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        # What the optimizer steps: the model itself, or with `fsdp` a sharded copy that
        # `finish` gathers back into it.
        self.trained = sharded_copy(model) if config.fsdp else model
        self.optimizer = torch.optim.AdamW(method.param_groups(self.trained))
        for group in self.optimizer.param_groups:
            group["base_lr"] = group["lr"]
        # Groups that may train at any point of the run: what checkpoints must hold.
        self.saved_groups = sorted(
            {
                index
                for index, g in enumerate(self.trained.layer_groups())
                for p in g.parameters()
                if any(p is q for grp in self.optimizer.param_groups for q in grp["params"])
            }
        )
        batches = math.ceil(len(train) / config.batch_size)
        self.steps_per_epoch = math.ceil(batches / config.grad_accum)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.warmup = int(config.warmup * self.total_steps)
        if config.fsdp:  # already sharded: Accelerate would wrap it in DDP on top
            self.wrapped = self.trained
        else:
            self.wrapped, self.optimizer = self.accelerator.prepare(model, self.optimizer)
        self.state = LoopState(patience_left=config.patience)
        self.saved_names = set(method.trainable_parameters(self.trained))
        self.best = self._copy()

    # -- checkpoints -------------------------------------------------------------------
    def _copy(self) -> dict[str, torch.Tensor]:
        return _trained_state(self.trained, self.saved_groups, self.saved_names)

    def _global_sums(self) -> dict[str, float]:
        """The epoch's training sums over every process (each adds up its part of a batch)."""
        sums = self.state.sums
        if self.accelerator.num_processes == 1 or not sums:
            return dict(sums)
        keys = sorted(sums)
        values = torch.tensor(
            [sums[key] for key in keys], dtype=torch.float64, device=self.accelerator.device
        )
        return dict(zip(keys, self.accelerator.reduce(values, "sum").tolist(), strict=True))

    def save(self) -> None:
        if self.checkpoints is None:
            return
        # Mid-epoch, the sums so far of every process (the main one's alone on resuming).
        state = replace(self.state, sums=self._global_sums())
        if self.config.fsdp:  # every process writes its shard
            save_sharded(
                self.checkpoints, state, self._copy(), self.best, self.trained, self.optimizer
            )
        elif self.accelerator.is_main_process:
            save_checkpoint(self.checkpoints, state, self._copy(), self.best, self.optimizer)
        self.accelerator.wait_for_everyone()

    def resume(self) -> bool:
        found = latest_checkpoint(self.checkpoints) if self.checkpoints else None
        if found is None:
            return False
        if self.config.fsdp:
            self.state, rng = load_counters(found)
            load_sharded(found, self.trained, self.optimizer, self.best)
        else:
            self.state, weights, self.best, optimizer, rng = load_checkpoint(found)
            self.model.load_state_dict(weights, strict=False)
            self.optimizer.load_state_dict(optimizer)
        torch.set_rng_state(rng["torch"])
        if not self.accelerator.is_main_process:  # the saved sums are every process's
            self.state.sums = {}
        self.method.on_epoch_start(self.trained, self.state.epoch)  # the unfreezing phase
        return True

    def finish(self) -> None:
        """The model holding the best epoch's weights (gathered from every process's shard
        with `fsdp`)."""
        if self.config.fsdp:
            gather_into(self.model, self.best)
        else:
            self.model.load_state_dict(self.best, strict=False)

    # -- training ----------------------------------------------------------------------
    def _shard(self, indices: list[int]) -> list[int]:
        """This process's part of a global batch."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        return indices[rank::world]

    def _optimizer_step(self) -> None:
        config, state = self.config, self.state
        factor = lr_multiplier(state.step, self.total_steps, self.warmup, config.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        if config.clip_grad_norm:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            self.accelerator.clip_grad_norm_(params, config.clip_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1

    def _gradient_sync(self, stepping: bool):
        """Gradients averaged across processes only on the micro-batch that steps."""
        if self.config.fsdp:
            self.wrapped.set_requires_gradient_sync(stepping)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if stepping else self.accelerator.no_sync(self.wrapped)

    def run_epoch(self, epoch: int, events: list[str]) -> dict:
        config, state = self.config, self.state
        self.wrapped.train()
        feed = self.train_feed
        order = training_batches(
            len(feed), config.batch_size, self.seed, epoch, feed.lengths, feed.draw
        )
        world = self.accelerator.num_processes
        for micro in range(state.micro, len(order)):
            batch = self.train_feed.batch(self._shard(order[micro])).to(self.accelerator.device)
            # DDP averages gradients over processes; weighting each process's mean loss by
            # its share of the global batch's units makes that the global batch mean even
            # when the last batch does not split evenly.
            share = batch.weight * world / self.train_feed.weight(order[micro])
            stepping = (micro + 1) % config.grad_accum == 0 or micro + 1 == len(order)
            sync = self._gradient_sync(stepping)
            autocast = torch.autocast(
                self.accelerator.device.type, dtype=torch.bfloat16, enabled=config.bf16
            )
            with sync, autocast:
                out = self.method.step(self.wrapped, batch)
                self.accelerator.backward(out["loss"] * share / config.grad_accum)
            _add(state.sums, self.task.sums(out["outputs"], batch.targets, out["loss"]))
            state.micro = micro + 1
            if stepping:
                self._optimizer_step()
                every = config.checkpoint_every
                if every and state.step % every == 0 and state.micro < len(order):
                    self.save()
        trained = self.task.summarize(self._global_sums())
        validated = self.task.evaluate(self.wrapped, self.val)
        record = {"epoch": epoch, "step": state.step}
        record |= {f"train_{k}": v for k, v in trained.items()}
        record |= {f"val_{k}": v for k, v in validated.items()}
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        if events:
            record["events"] = events
        return record

    def end_epoch(self, record: dict) -> None:
        """Record the epoch, keep the best weights, decide on early stopping."""
        state, task = self.state, self.task
        state.history.append(record)
        score, loss = record.get(f"val_{task.selection}"), record.get("val_loss")
        tie = score is not None and score == state.best_score and loss < state.best_loss
        # Every epoch replaces the one kept when the last is asked for, or when there is no
        # validation to choose by (given back to training).
        last = self.config.select == "last" or score is None
        if last or state.best_score is None or task.better(score, state.best_score) or tie:
            state.best_score, state.best_loss = score, loss
            state.best_epoch = record["epoch"]
            self.best = self._copy()
            state.patience_left = self.config.patience
        elif state.patience_left is not None:
            state.patience_left -= 1
        stop = state.patience_left is not None and state.patience_left <= 0
        state.epoch, state.micro, state.sums = record["epoch"] + 1, 0, {}
        state.finished = stop or record["epoch"] >= self.config.epochs


def fit(
    model: AdaptableModel,
    method: Method,
    train: Feed,
    val: Feed,
    config: TrainConfig,
    seed: int = 0,
    hooks: Sequence[Hook] = (),
    label: str = "training",
    checkpoints: Path | None = None,
    resume: bool = False,
    max_steps: int | None = None,
) -> FitResult:
    """Train `model` (already `method.prepare`d) and leave it holding the best epoch's
    weights. With `resume`, continue from the newest checkpoint in `checkpoints`; the result
    equals an uninterrupted run's. `hooks` watch the fit, in order (`tsuika.train.hooks`);
    `label` names its phase to them.

    `max_steps`: no epoch starts that would take the run past this many optimizer steps (the
    schedule stays the one for `config.epochs`, so a cut run follows the full run's rates)."""
    if not any(group["params"] for group in method.param_groups(model)):
        return evaluated(model, method, train, val, hooks, label)
    started = time.perf_counter()
    loop = Loop(model, method, train, val, config, seed, checkpoints)
    if resume:  # the generator comes back from the checkpoint
        loop.resume()
    else:
        # Training's draws (dropout, a diffusion step's noise) start from the seed, whatever
        # ran before in this process: caching, baselines, generated class images, a first
        # model load.
        torch.manual_seed(seed)
    state = loop.state
    # After a resume, the epochs checkpointed but maybe not yet logged when killed.
    start = FitStart(label, method.task, config.epochs, list(state.history))
    for hook in hooks:
        hook.fit_started(start)
    stopped_by = None
    while not state.finished:
        if max_steps is not None and state.step + loop.steps_per_epoch > max_steps:
            stopped_by = "max_steps"
            break
        epoch = state.epoch
        events = method.on_epoch_start(loop.trained, epoch) if state.micro == 0 else []
        record = loop.run_epoch(epoch, events)
        loop.end_epoch(record)
        if stops(hooks, record) and not state.finished:
            state.finished, stopped_by = True, "hook"
        loop.save()
        for hook in hooks:
            hook.epoch_saved(record)
    loop.finish()
    last = state.history[-1]["epoch"] if state.history else 0
    rates: dict[str, float] = {}
    for index, group in enumerate(loop.optimizer.param_groups):
        rates.setdefault(str(group.get("name", f"group {index}")), group["base_lr"])
    result = FitResult(
        history=state.history,
        best_epoch=state.best_epoch,
        best_score=state.best_score,
        stopped_early=bool(
            state.patience_left is not None and state.patience_left <= 0 and last < config.epochs
        ),
        stopped_by=stopped_by,
        steps=state.step,
        seconds=time.perf_counter() - started,
        schedule={
            "kind": config.schedule,
            "total_steps": loop.total_steps,
            "warmup_steps": loop.warmup,
            "rates": rates,
        },
    )
    for hook in hooks:
        hook.fit_ended(result)
    return result


def evaluated(
    model: AdaptableModel,
    method: Method,
    train: Feed,
    val: Feed,
    hooks: Sequence[Hook] = (),
    label: str = "training",
) -> FitResult:
    """The fit when nothing is left to step (a head already solved in closed form by
    `before_fit`): the model as prepared is the result, recorded as one epoch of its training
    and validation metrics. Nothing changes, so there is nothing to checkpoint: a resumed run
    prepares it again."""
    started = time.perf_counter()
    task = method.task
    for hook in hooks:
        hook.fit_started(FitStart(label, task, 1))
    record: dict = {"epoch": 1, "step": 0}
    record |= {f"train_{k}": v for k, v in task.evaluate(model, train).items()}
    record |= {f"val_{k}": v for k, v in task.evaluate(model, val).items()}
    stops(hooks, record)  # the one epoch there is has ended anyway
    for hook in hooks:
        hook.epoch_saved(record)
    result = FitResult(
        history=[record],
        best_epoch=1,
        best_score=record.get(f"val_{task.selection}"),
        seconds=time.perf_counter() - started,
    )
    for hook in hooks:
        hook.fit_ended(result)
    return result
