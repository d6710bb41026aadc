"""Frozen activations kept across runs, by what they were computed from.

Within a run, `feed/cache.py` computes a frozen prefix once and reuses it every epoch. Across
runs the same pass was made again: a second run on the same data and model (the demo run twice,
`tsuika plan` invoked again, the test split a run already scored) paid for the whole frozen pass
each time. An entry here is addressed by a hash of everything its numbers depend on: the inputs
as the model receives them (token ids, pixels: so the file's contents and the preprocessing),
the weights and buffers of the stages it ran, the boundary, the batch size (padding), the
dtype, the device kind and torch's version. A changed file, weight or setting is another key,
so a stale entry is never read; nothing else is needed to invalidate one.

Entries live in `activations/<key>/` under the user's cache folder (`TSUIKA_CACHE`, else
~/.cache/tsuika; `TSUIKA_ACTIVATIONS` names another folder): raw tensor bytes per state key,
read through a memory map, an index in JSON and a line about what they are (`tsuika cache
ls`). Nothing in an entry is code or a pickle. The least recently used entries go when the
store holds more than its limit (`train.cache_limit_gb`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tsuika.console import warn
from tsuika.errors import TsuikaError
from tsuika.files import fresh_folder, open_new, user_cache_folder, write_atomic
from tsuika.models.base import AdaptableModel, State

FORMAT = 1
"""Bumped when the layout of an entry changes (old entries are then other keys)."""
INDEX = "index.json"
ABOUT = "about.json"


def _hash_state(digest, name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    # bytes of any dtype (bfloat16 has no numpy twin), a 0-d counter's too: as raw bytes
    flat = tensor.reshape(-1)
    digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")


def inputs_key(items) -> str:
    """The identity of a feed's items (dicts of tensors), in order."""
    digest = hashlib.blake2b(digest_size=16)
    for i in range(len(items)):
        for name, value in sorted(items[i].items()):
            _hash_state(digest, name, value)
        digest.update(b";")
    return digest.hexdigest()


def weights_key(model: AdaptableModel, start: int, stop: int) -> str:
    """The identity of stages [start, stop): every parameter and buffer, by name."""
    digest = hashlib.blake2b(digest_size=16)
    for index in range(start, stop):
        for name, value in model.stages[index].state_dict().items():
            _hash_state(digest, f"{index}.{name}", value)
    return digest.hexdigest()


def identity(feed) -> str | None:
    """What a feed's items are: the hash of raw inputs (hashed each time, so a feed changed in
    place is never mistaken for the one it was), or the address of the stored pass that made
    them (`Feed.origin`); None for what cannot be stored (augmented or repeated feeds)."""
    if feed.start == 0 and isinstance(feed.items, list) and not feed.augmented:
        return inputs_key(feed.items)
    return feed.origin


@dataclass
class Entry:
    """One stored pass, as `tsuika cache ls` lists it."""

    key: str
    about: dict
    bytes: int
    used: float
    """When it was last written or read (seconds since the epoch)."""


class StoredItems:
    """An entry's per-example states, in input order, read from its memory-mapped files."""

    def __init__(self, folder: Path) -> None:
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
        if index.get("format") != FORMAT:
            raise ValueError(f"format {index.get('format')!r}")
        self.dtypes = {name: np.dtype(dtype) for name, dtype in index["dtypes"].items()}
        self.items: list[dict[str, list]] = index["items"]
        self.maps = {}
        for name, dtype in self.dtypes.items():
            size = (folder / f"{name}.bin").stat().st_size
            needed = max(
                (offset + int(np.prod(shape)) * dtype.itemsize for offset, shape in self._of(name)),
                default=0,
            )
            if size < needed:
                raise ValueError(f"{name}.bin holds {size} bytes, the index needs {needed}")
            self.maps[name] = (
                np.memmap(folder / f"{name}.bin", dtype=np.uint8, mode="r") if size else None
            )

    def _of(self, name: str):
        return (item[name] for item in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> State:
        state = {}
        for name, (offset, shape) in self.items[i].items():
            dtype = self.dtypes[name]
            count = int(np.prod(shape))
            raw = self.maps[name][offset : offset + count * dtype.itemsize] if count else b""
            array = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
            state[name] = torch.from_numpy(array.copy())
        return state


def write_items(folder: Path, items) -> int:
    """Every item of `items` (indexable, len()) into `folder` in input order; its bytes."""
    handles, offsets, dtypes, index = {}, {}, {}, []
    try:
        for i in range(len(items)):
            entry = {}
            for name, tensor in items[i].items():
                array = tensor.detach().cpu().contiguous().numpy()
                if name not in handles:
                    handles[name] = open_new(folder / f"{name}.bin")
                    offsets[name], dtypes[name] = 0, array.dtype.str
                handles[name].write(array.tobytes())
                entry[name] = [offsets[name], list(array.shape)]
                offsets[name] += array.nbytes
            index.append(entry)
    finally:
        for handle in handles.values():
            handle.close()
    write_atomic(folder / INDEX, json.dumps({"format": FORMAT, "dtypes": dtypes, "items": index}))
    return sum(offsets.values())


class ActivationStore:
    """The cross-run store: `key` what a pass depends on, `get` a stored pass, `put` a new one."""

    def __init__(self, folder: Path, limit_bytes: int) -> None:
        self.folder = Path(folder)
        self.limit_bytes = limit_bytes
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(
        model: AdaptableModel, inputs: str, start: int, stop: int, batch_size: int, what: str
    ) -> str:
        """The address of stages [start, stop) run over the items whose identity is `inputs`,
        in batches of `batch_size`; `what` names what is kept of the outputs."""
        parameter = next(model.parameters())
        parts = [
            f"tsuika-activations {FORMAT}",
            what,
            inputs,
            weights_key(model, start, stop),
            f"{start}:{stop}",
            str(batch_size),
            str(parameter.dtype),
            parameter.device.type,
            torch.__version__,
            type(model).__name__,
        ]
        return hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()

    def get(self, key: str) -> StoredItems | None:
        folder = self.folder / key
        if not folder.is_dir():
            self.misses += 1
            return None
        try:
            items = StoredItems(folder)
        except (OSError, ValueError, KeyError, TypeError) as error:
            # A damaged entry (a full disk, an edit) is recomputed, never half read.
            warn(f"activation store: entry {key} is damaged ({error}); computing it again")
            shutil.rmtree(folder, ignore_errors=True)
            self.misses += 1
            return None
        os.utime(folder / ABOUT if (folder / ABOUT).exists() else folder)
        self.hits += 1
        return items

    def put(self, key: str, items, about: dict) -> None:
        """Keep `items` under `key` (another process may have kept them meanwhile: then
        theirs stays); then the least recently used entries go while over the limit."""
        folder = self.folder / key
        if folder.exists():
            return
        try:
            with fresh_folder(folder) as staging:
                size = write_items(staging, items)
                about = {**about, "examples": len(items), "bytes": size, "created": time.time()}
                write_atomic(staging / ABOUT, json.dumps(about))
        except TsuikaError:
            if folder.is_dir():  # written by another process in the meantime
                return
            raise
        except OSError as error:  # a full disk must not end the run that computed them
            warn(f"activation store: could not keep a pass in {self.folder} ({error})")
            return
        self.evict()

    def entries(self) -> list[Entry]:
        if not self.folder.is_dir():
            return []
        found = []
        for folder in self.folder.iterdir():
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            try:
                about = json.loads((folder / ABOUT).read_text(encoding="utf-8"))
                used = (folder / ABOUT).stat().st_mtime
            except (OSError, ValueError):
                about, used = {}, folder.stat().st_mtime
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            found.append(Entry(folder.name, about, size, used))
        return sorted(found, key=lambda entry: entry.used, reverse=True)

    def evict(self) -> list[Entry]:
        """Remove the least recently used entries until the store fits its limit."""
        entries, removed = self.entries(), []
        total = sum(entry.bytes for entry in entries)
        while entries and total > self.limit_bytes:
            oldest = entries.pop()
            shutil.rmtree(self.folder / oldest.key, ignore_errors=True)
            total -= oldest.bytes
            removed.append(oldest)
        return removed

    def clear(self) -> int:
        """Remove every entry; their bytes."""
        entries = self.entries()
        for entry in entries:
            shutil.rmtree(self.folder / entry.key, ignore_errors=True)
        return sum(entry.bytes for entry in entries)


def activation_store(limit_gb: float) -> ActivationStore | None:
    """The user's store: `TSUIKA_ACTIVATIONS` (a folder on a larger disk, or the test suite's
    own), else `activations/` in tsuika's cache folder (`TSUIKA_CACHE`, else ~/.cache/tsuika);
    None with `TSUIKA_ACTIVATIONS=off` (the benches time cold runs)."""
    folder = os.environ.get("TSUIKA_ACTIVATIONS") or user_cache_folder() / "activations"
    if str(folder) == "off":
        return None
    return ActivationStore(Path(folder), int(limit_gb * 2**30))
