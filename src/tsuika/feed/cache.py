"""Activations at a frozen boundary, computed once and reused every epoch.

When every stage below boundary `b` is frozen and the inputs are deterministic, the output of
`model.forward(batch, 0, b)` never changes: computing it once turns each later epoch into a
pass over the upper stages only. Transfer learning (b = the head) then costs about one
inference pass. Items are kept in memory until `memory_limit` bytes, then spill to flat files
read through a memory map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from tsuika.config import TrainConfig
from tsuika.feed import Feed, collate_states, gather_outputs, split_states
from tsuika.feed.batches import sorted_batches
from tsuika.feed.store import ActivationStore, activation_store, identity
from tsuika.files import open_new
from tsuika.models.base import AdaptableModel, State


class DiskStore:
    """Append-only per-key files of raw tensor bytes + an in-memory index of slices."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.index: list[dict[str, tuple[int, tuple[int, ...], np.dtype]]] = []
        self.files: dict[str, object] = {}
        self.offsets: dict[str, int] = {}
        self.maps: dict[str, np.memmap] = {}

    def append(self, item: State) -> None:
        entry = {}
        for key, tensor in item.items():
            array = tensor.numpy()
            if key not in self.files:
                self.files[key] = open_new(self.folder / f"{key}.bin")
                self.offsets[key] = 0
            self.files[key].write(array.tobytes())
            entry[key] = (self.offsets[key], array.shape, array.dtype)
            self.offsets[key] += array.nbytes
        self.index.append(entry)

    def finish(self) -> None:
        for key, handle in self.files.items():
            handle.close()
            self.maps[key] = np.memmap(self.folder / f"{key}.bin", dtype=np.uint8, mode="r")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> State:
        item = {}
        for key, (offset, shape, dtype) in self.index[i].items():
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            raw = self.maps[key][offset : offset + nbytes]
            item[key] = torch.from_numpy(raw.view(dtype).reshape(shape).copy())
        return item


class ActivationCache:
    """Per-example states in input order, in memory or spilled to disk."""

    def __init__(self, n: int, memory_limit: int, spill_dir: Path | None, mode: str) -> None:
        self.items: list[State | None] = [None] * n
        self.memory_limit = memory_limit
        self.spill_dir = spill_dir
        self.nbytes = 0
        self.disk: DiskStore | None = None
        self.disk_slot: dict[int, int] = {}
        self.may_spill = mode == "auto"  # `memory` never spills; `disk` starts on disk
        if mode == "disk":
            self._spill()

    def _spill(self) -> None:
        if self.spill_dir is None:
            return
        self.disk = DiskStore(self.spill_dir)
        for i, item in enumerate(self.items):
            if item is not None:
                self.disk_slot[i] = len(self.disk)
                self.disk.append(item)
                self.items[i] = None

    def put(self, i: int, item: State) -> None:
        if self.disk is not None:
            self.disk_slot[i] = len(self.disk)
            self.disk.append(item)
            return
        self.items[i] = item
        self.nbytes += sum(t.numel() * t.element_size() for t in item.values())
        if self.may_spill and self.nbytes > self.memory_limit:
            self._spill()

    def finish(self) -> None:
        if self.disk is not None:
            self.disk.finish()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> State:
        if self.disk is not None and i in self.disk_slot:
            return self.disk[self.disk_slot[i]]
        return self.items[i]


@dataclass
class CacheSettings:
    """How precomputed activations are kept (from `train.cache*`), and how progress shows."""

    mode: str = "auto"
    """`auto` (memory, spilling to disk above the limit), `memory`, `disk`, `off`."""
    memory_limit_mb: int = 2048
    folder: Path | None = None
    """Where spilled activations go (one sub-folder per cached feed)."""
    batch_size: int = 64
    progress: Callable[[str, int], Callable[[int], None]] | None = None
    """`progress(label, total)` → `advance(n)`, or None for silence."""
    shared: dict | None = None
    """Feeds already cached, by split, start and boundary, kept across runs that load the
    same pretrained weights and data (`tsuika plan`'s trials): each frozen prefix runs once."""
    store: ActivationStore | None = None
    """The cross-run store (`tsuika.feed.store`): a pass made by an earlier run (or process)
    on the same inputs and weights is read instead of computed; None: every pass is made."""


def store_of(train: TrainConfig) -> ActivationStore | None:
    """The cross-run activation store, unless the run computes every pass itself."""
    if train.cache == "off" or not train.cache_across_runs:
        return None
    return activation_store(train.cache_limit_gb)


def frozen_pass_settings(train: TrainConfig) -> CacheSettings:
    """How a run with these `train` settings computes and keeps its frozen passes; also used
    outside a run (`tsuika check`, `tsuika rank`, a finished run's `evaluate`), so that their
    passes and a run's have one address in the activation store."""
    return CacheSettings(
        mode=train.cache,
        memory_limit_mb=train.cache_memory_mb,
        batch_size=max(64, train.batch_size),
        store=store_of(train),
    )


@torch.no_grad()
def cache_boundary(
    model: AdaptableModel, feed: Feed, boundary: int, settings: CacheSettings, name: str
) -> Feed:
    """Run stages [feed.start, boundary) once over `feed` and return a feed at `boundary`
    (targets, lengths and units unchanged).

    Batches go in length-sorted order (least padding); results are stored by input index, so
    the order of the examples is unchanged.
    """
    store, key = settings.store, None
    if store is not None and (origin := identity(feed)) is not None:
        key = store.key(model, origin, feed.start, boundary, settings.batch_size, "states")
        stored = store.get(key)
        if stored is not None and len(stored) == len(feed):
            return replace(feed.at(stored, boundary, collate_states), origin=key)
    was_training = model.training
    model.eval()
    lengths = feed.lengths or [1] * len(feed)
    spill = settings.folder / name if settings.folder else None
    cache = ActivationCache(len(feed), settings.memory_limit_mb * 2**20, spill, settings.mode)
    order = sorted_batches(lengths, settings.batch_size)
    advance = settings.progress(f"caching {name}", len(feed)) if settings.progress else None
    device = next(model.parameters()).device
    for batch in feed.batches(order):
        state = model(batch.to(device).state, feed.start, boundary)
        state = {key: value.cpu() for key, value in state.items()}
        for index, item in zip(batch.indices, split_states(state), strict=True):
            cache.put(index, item)
        if advance is not None:
            advance(len(batch.indices))
    cache.finish()
    model.train(was_training)
    if key is not None:
        about = {"model": model.spec.get("source"), "split": name, "boundary": boundary}
        store.put(key, cache, {**about, "stage": model.stage_names[boundary - 1]})
    # Keep the input lengths: training batches are bucketed by them, cached or not, so a
    # cached run sees exactly the batches an uncached run would.
    return replace(feed.at(cache, boundary, collate_states), origin=key)


def pooled_pass(model: AdaptableModel, feed: Feed, settings: CacheSettings, name: str) -> State:
    """Every stage but the head over `feed`, stacked in input order: read from the activation
    store when `settings` has one and an earlier pass (a run's, a check's) kept it."""
    stop = model.num_stages - 1
    if settings.store is None or feed.start >= stop:  # nothing to keep, or nothing to run
        return gather_outputs(model, feed, settings.batch_size, stop=stop)
    quiet = replace(settings, progress=None, folder=None)  # one pass, kept in memory
    pooled = cache_boundary(model, feed, stop, quiet, name)
    rows = [pooled.items[i] for i in range(len(pooled))]
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}
