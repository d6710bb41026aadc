"""A `Feed` is examples ready for the model at some stage: raw inputs (start 0) or cached
activations at a frozen boundary (start b). The loop only ever sees feeds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from tsuika.models.base import State

Collate = Callable[[list[State]], State]


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
    labels: torch.Tensor
    indices: list[int]

    def to(self, device: torch.device) -> Batch:
        """The batch on `device` (a no-op on CPU): feeds live in host memory."""
        if device.type == "cpu":
            return self
        state = {k: v.to(device, non_blocking=True) for k, v in self.state.items()}
        return Batch(state, self.start, self.labels.to(device), self.indices)


@dataclass
class Feed:
    items: list[State] | object  # a list, or an ActivationCache (indexable, len())
    labels: torch.Tensor
    start: int
    collate: Collate
    lengths: list[int] | None = None
    """Token lengths when the items are ragged (used for sorting and bucketing)."""
    augmented: bool = False
    """Random augmentation in `collate`: each pass differs, so never cache this feed."""

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: list[int]) -> Batch:
        state = self.collate([self.items[i] for i in indices])
        return Batch(state, self.start, self.labels[indices], indices)

    def batches(self, order: list[list[int]]) -> Iterator[Batch]:
        for indices in order:
            yield self.batch(indices)
