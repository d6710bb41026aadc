"""A `Feed` is examples ready for the model at some stage: raw inputs (start 0) or cached
activations at a frozen boundary (start b), with their targets. The loop, the methods and the
tasks only ever see feeds and batches.

Targets are a dict of tensors (one label column, several, a number, later token ids or a
teacher's logits): every key a feed is given travels with its batches, cached or not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from tsuika.feed.batches import sorted_batches
from tsuika.models.base import AdaptableModel, State

if TYPE_CHECKING:
    from tsuika.feed.cache import CacheSettings

Collate = Callable[[list[State]], State]
POOLED_BATCH = 128
"""Batch size of the pretrained model's pooled pass (the baselines' and LP-FT's features)."""
Targets = dict[str, torch.Tensor]


def collate_states(items: list[State]) -> State:
    """Stack per-example tensors; ragged ones (token activations) are zero-padded along dim 0,
    which also pads `attention_mask` with zeros."""
    batch = {}
    for key in items[0]:
        tensors = [item[key] for item in items]
        if all(t.shape == tensors[0].shape for t in tensors):
            batch[key] = torch.stack(tensors)
            if batch[key].dim() == 4:  # cached feature maps: keep the fast NHWC layout
                batch[key] = batch[key].contiguous(memory_format=torch.channels_last)
        else:
            batch[key] = torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True)
    return batch


def split_states(state: State) -> list[State]:
    """Inverse of `collate_states`: a batch → per-example tensors, padding trimmed by
    `attention_mask` so cached token activations cost only real tokens."""
    size = next(iter(state.values())).shape[0]
    lengths = state["attention_mask"].sum(1).tolist() if "attention_mask" in state else None
    width = state["attention_mask"].shape[1] if lengths else None
    items = []
    for row in range(size):
        item = {}
        for key, tensor in state.items():
            value = tensor[row]
            if lengths and value.dim() >= 1 and value.shape[0] == width:
                value = value[: int(lengths[row])]
            item[key] = value.detach().clone()
        items.append(item)
    return items


@dataclass
class Batch:
    state: State
    start: int
    targets: Targets
    indices: list[int]
    weight: float
    """Units of loss in this batch (examples; tokens for token-level tasks): losses are
    averaged per unit, so accumulation and data-parallel shards are weighted by this."""

    def to(self, device: torch.device) -> Batch:
        """The batch on `device` (a no-op on CPU): feeds live in host memory."""
        if device.type == "cpu":
            return self
        state = {k: v.to(device, non_blocking=True) for k, v in self.state.items()}
        targets = {k: v.to(device, non_blocking=True) for k, v in self.targets.items()}
        return Batch(state, self.start, targets, self.indices, self.weight)


class Repeated:
    """A sequence of items seen `times` over, by index (item i is item i mod n)."""

    def __init__(self, items, times: int) -> None:
        self.items, self.times, self.n = items, times, len(items)

    def __len__(self) -> int:
        return self.n * self.times

    def __getitem__(self, index: int):
        return self.items[index % self.n]


@dataclass
class Feed:
    items: list[State] | object  # a list, or an ActivationCache (indexable, len())
    targets: Targets
    start: int
    collate: Collate
    lengths: list[int] | None = None
    """Token lengths when the items are ragged (used for sorting and bucketing)."""
    units: list[float] | None = None
    """Loss units per example (None: one each)."""
    augmented: bool = False
    """Random augmentation in `collate`: each pass differs, so never cache this feed."""
    inputs: list | None = None
    """The raw inputs (texts, decoded images) the items were encoded from, for a model with
    its own preprocessing (a distillation teacher) to encode them its way."""
    draw: list[float] | None = None
    """Training epochs draw examples with replacement in proportion to these weights
    (`train.balance: sampler`) instead of shuffling every example once."""
    origin: str | None = None
    """For cached items, the address in the cross-run store (`tsuika.feed.store`) of the pass
    that computed them (raw items are hashed instead: `feed.cache.identity`)."""

    def __len__(self) -> int:
        return len(self.items)

    def weight(self, indices: list[int]) -> float:
        """Loss units of these examples, known without collating them."""
        if self.units is None:
            return float(len(indices))
        return float(sum(self.units[i] for i in indices))

    def batch(self, indices: list[int]) -> Batch:
        state = self.collate([self.items[i] for i in indices])
        targets = {key: value[indices] for key, value in self.targets.items()}
        return Batch(state, self.start, targets, indices, self.weight(indices))

    def batches(self, order: list[list[int]]) -> Iterator[Batch]:
        for indices in order:
            yield self.batch(indices)

    def repeated(self, times: int) -> Feed:
        """Every example `times` times (views, nothing copied): an epoch of a few examples
        becomes enough batches to learn from between two validations."""
        if times <= 1:
            return self
        # `replace` keeps any field not named here as it is: a new per-example field must be
        # named here to be repeated with the rest.
        return replace(
            self,
            items=Repeated(self.items, times),
            targets={key: value.repeat(times) for key, value in self.targets.items()},
            lengths=self.lengths * times if self.lengths else None,
            units=self.units * times if self.units else None,
            inputs=self.inputs * times if self.inputs is not None else None,
            draw=self.draw * times if self.draw else None,
            origin=None,  # other items
        )

    def at(self, items: object, start: int, collate: Collate) -> Feed:
        """The same examples and targets, entering the model at `start` (a cached feed)."""
        return replace(
            self, items=items, start=start, collate=collate, augmented=False, origin=None
        )


def input_feed(
    model: AdaptableModel,
    inputs: list,
    targets: Targets | None = None,
    augment=None,
    units: list[float] | None = None,
) -> Feed:
    """Raw inputs, encoded once (tokenised / decoded), entering the model at stage 0.
    With an active `augment` (images), batches are randomly augmented on every pass;
    `units` are the loss units of each example (tokens, for token-level tasks)."""
    preprocess = model.preprocess
    items = preprocess.encode(inputs)
    ragged = getattr(preprocess, "ragged", True)
    lengths = [preprocess.length(item) for item in items] if ragged else None
    targets = targets or {}
    if augment is not None and augment.active:
        collate = preprocess.augmented(augment)
        return Feed(items, targets, 0, collate, lengths, units, augmented=True, inputs=inputs)
    return Feed(items, targets, 0, preprocess.collate, lengths, units, inputs=inputs)


ModelInputs = Callable[[State, Targets], State]
"""A batch's state and targets → what the model is given (a task may add what it needs
computed, e.g. which positions' next-token logits)."""


@torch.no_grad()
def run_model(
    model: torch.nn.Module,
    feed: Feed,
    batch_size: int = 128,
    stop: int | None = None,
    inputs: ModelInputs | None = None,
) -> Iterator[tuple[State, Batch]]:
    """Eval-mode outputs (of the stages before `stop`; default all), batch by batch, in
    length-sorted order (least padding); each with its batch, whose `indices` say where the
    rows belong. Outputs are on the CPU, float32."""
    was_training = model.training
    model.eval()
    lengths = feed.lengths or [1] * len(feed)
    device = next(model.parameters()).device
    try:
        for batch in feed.batches(sorted_batches(lengths, batch_size)):
            batch = batch.to(device)
            state = inputs(batch.state, batch.targets) if inputs else batch.state
            outputs = model(state, feed.start, stop)
            yield {k: v.float().cpu() for k, v in outputs.items()}, batch
    finally:
        model.train(was_training)


def gather_outputs(
    model: torch.nn.Module,
    feed: Feed,
    batch_size: int = 128,
    stop: int | None = None,
    keep: Callable[[State, Targets], State] | None = None,
    inputs: ModelInputs | None = None,
) -> State:
    """Every output of the model (of the stages before `stop`) over `feed`, rows in the
    feed's order; with `keep`, only what it keeps of each batch's outputs (given the
    batch's targets)."""
    rows: dict[str, list[torch.Tensor | None]] = {}
    for outputs, batch in run_model(model, feed, batch_size, stop, inputs):
        if keep is not None:
            outputs = keep(outputs, batch.targets)
        for key, value in outputs.items():
            column = rows.setdefault(key, [None] * len(feed))
            for index, row in zip(batch.indices, value, strict=True):
                column[index] = row
    return {key: torch.stack(column) for key, column in rows.items()}


class Pretrained:
    """What the model gives before training, on each split's feed: its pooled state (every
    stage but the head), computed at most once per split and only when asked. The
    linear-probe baseline and LP-FT's first head start from the same pass over the training
    split. Valid until the model trains. A feed may be given as a function that makes it,
    called only when the split is first needed."""

    def __init__(
        self,
        model: AdaptableModel,
        feeds: dict[str, Feed | Callable[[], Feed]],
        settings: CacheSettings | None = None,
    ) -> None:
        self.model, self._feeds, self.settings = model, dict(feeds), settings
        self._pooled: dict[str, State] = {}

    def feed(self, split: str) -> Feed:
        made = self._feeds[split]
        if not isinstance(made, Feed):
            made = self._feeds[split] = made()
        return made

    def pooled(self, split: str) -> State:
        if split not in self._pooled and split != "train" and len(self.feed(split)) == 0:
            # A validation split given back to training: no rows, the training split's widths.
            self._pooled[split] = {key: rows[:0] for key, rows in self.pooled("train").items()}
        if split not in self._pooled:
            self._pooled[split] = self._pooled_pass(split, self.model.num_stages - 1)
        return self._pooled[split]

    def _pooled_pass(self, split: str, stop: int) -> State:
        """Every stage before `stop` over the split, or what an earlier run kept of that pass
        in the activation store (with the run's cache `settings`)."""
        feed = self.feed(split)
        if self.settings is None or self.settings.store is None:
            return gather_outputs(self.model, feed, POOLED_BATCH, stop=stop)
        from tsuika.feed.cache import pooled_pass  # built on this module: imported when used

        settings = replace(self.settings, batch_size=POOLED_BATCH)
        return pooled_pass(self.model, feed, settings, split)

    def features(self, split: str) -> torch.Tensor:
        return self.pooled(split)["features"]
