"""Fully sharded data parallel (`train.fsdp`): full fine-tuning of a model that does not fit
one device, its weights, gradients and optimizer state split across the processes.

Each layer group (stage) is sharded with PyTorch's FSDP2 `fully_shard`, the call Accelerate's
FSDP plugin makes; Accelerate 1.16 enables that plugin for GPUs only (its `AcceleratorState`
never turns MULTI_CPU into FSDP), so tsuika calls it itself, and the same code runs on CPU
with gloo. A stage's weights are gathered for its forward and backward and freed after.

The model the run was given stays plain and untouched while a sharded copy trains (on a GPU
the plain one is the CPU copy every process loaded anyway); at the end every process gathers
the best weights into it, so the test split, the baselines, the saved model and `export`
work on an ordinary model, as after a one-process run.

Checkpoints are sharded: every process writes its shard of the weights, the best weights
and the optimizer state as safetensors, through torch's distributed checkpoint with Hugging
Face storage (no pickles; a resumed run may use another number of processes: the shards are
read by offset). The folder must be one every process can reach (one machine, or a shared
file system).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from tsuika.errors import TsuikaError
from tsuika.files import fresh_folder, write_atomic
from tsuika.models.base import AdaptableModel
from tsuika.train.checkpoint import unreadable
from tsuika.train.distributed import barrier, from_main, is_main_process

SHARDS = "shards"


def check_sharding(config, processes: int) -> None:
    """A `train.fsdp` run that cannot be one, said before anything is built or launched."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        raise TsuikaError(
            "accelerate launch --use_fsdp: tsuika shards the model itself, with its own "
            "sharded checkpoints; launch without --use_fsdp and set train.fsdp=true"
        )
    if not config.train.fsdp:
        return
    if processes < 2:
        raise TsuikaError(
            "train.fsdp shards the model across processes: run it with --processes N (N ≥ 2), "
            "or under torchrun or accelerate launch"
        )
    from tsuika.methods import METHODS, method_class

    if config.method not in METHODS or not method_class(config.method).shardable:
        shardable = ", ".join(name for name, part in METHODS.items() if part.shardable)
        raise TsuikaError(
            f"train.fsdp shards full fine-tuning: name a method that trains the whole network "
            f"({shardable}), not `{config.method}` (adapters and heads train few weights and "
            "need no sharding)"
        )
    if config.data.retain:
        raise TsuikaError(
            "train.fsdp and data.retain: the forgetting monitor reads the model during "
            "training, which FSDP holds in shards; drop one of the two"
        )
    if config.finetune.l2sp:
        raise TsuikaError(
            "train.fsdp and finetune.l2sp: L2-SP compares every weight with a whole copy of "
            "the pretrained one, which FSDP would have to shard too (not built yet); use "
            "finetune.lwf, or drop one of the two"
        )


def sharded_copy(model: AdaptableModel) -> AdaptableModel:
    """A copy of `model` with every stage sharded across the processes (the stage is FSDP's
    unit: its weights are gathered together, just before it runs)."""
    from torch.distributed.fsdp import fully_shard

    owners: dict[int, int] = {}
    for index, stage in enumerate(model.stages):
        for parameter in stage.parameters():
            first = owners.setdefault(id(parameter), index)
            if first != index:
                names = model.stage_names
                raise TsuikaError(
                    f"train.fsdp: stages `{names[first]}` and `{names[index]}` share weights "
                    "(tied embeddings); FSDP shards each stage on its own — train this model "
                    "without train.fsdp"
                )
    sharded = copy.deepcopy(model)
    for stage in sharded.stages:
        fully_shard(stage)
    fully_shard(sharded)
    return sharded


def gather_into(model: AdaptableModel, state: dict) -> None:
    """`model` (plain) holding `state` (tensors of the sharded copy, by its state-dict names),
    every shard gathered: a collective, every process calls it."""
    from torch.distributed.tensor import DTensor

    full = {
        key: value.full_tensor() if isinstance(value, DTensor) else value
        for key, value in state.items()
    }
    model.load_state_dict(full, strict=False)


def _flat(weights: dict, best: dict, optimizer_state: dict) -> dict[str, torch.Tensor]:
    """One flat dict of tensors (what Hugging Face storage holds): weights, best weights and
    every optimizer state tensor by parameter name."""
    flat = {f"weights.{k}": v for k, v in weights.items()}
    flat |= {f"best.{k}": v for k, v in best.items()}
    for name, values in optimizer_state["state"].items():
        for key, value in values.items():
            flat[f"optimizer.{name}.{key}"] = value
    return flat


def _optimizer_state(sharded: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(sharded, optimizer)


def save_sharded(
    folder: Path,
    loop,
    weights: dict,
    best: dict,
    sharded: nn.Module,
    optimizer: torch.optim.Optimizer,
) -> Path:
    """A checkpoint written by every process into one fresh folder, which the main process
    renames into place once all shards and then `loop.json` are written (a kill leaves the
    previous checkpoint whole); the older ones are removed after."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    final = folder / f"step-{loop.step:07d}-{loop.epoch:04d}-{loop.micro:05d}"
    main = is_main_process()
    # The main process makes the folder (nothing in it can be a planted link); the others
    # are told its name and write their shards into it.
    with fresh_folder(final, replace=True) if main else contextlib.nullcontext() as staging:
        staging = Path(from_main(str(staging)))
        flat = _flat(weights, best, _optimizer_state(sharded, optimizer))
        writer = HuggingFaceStorageWriter(str(staging / SHARDS), save_distributed=True)
        dcp.save(flat, storage_writer=writer)
        barrier()  # every shard is written
        if main:
            torch.save({"torch": torch.get_rng_state()}, staging / "rng.pt")
            write_atomic(staging / "loop.json", json.dumps(asdict(loop)))  # fsynced: last
    if main:
        for old in folder.iterdir():
            if old != final and old.name.startswith("step-"):
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_sharded(
    checkpoint: Path, sharded: nn.Module, optimizer: torch.optim.Optimizer, best: dict
) -> None:
    """The sharded copy's weights, `best` (sharded tensors, filled in place) and the
    optimizer's state from `checkpoint`, whatever number of processes wrote it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    weights = sharded.state_dict()
    optimizer_state = _optimizer_state(sharded, optimizer)
    flat = _flat(weights, best, optimizer_state)
    try:
        dcp.load(flat, storage_reader=HuggingFaceStorageReader(str(checkpoint / SHARDS)))
    except Exception as error:  # a missing or damaged shard: torch's errors vary by cause
        raise unreadable(checkpoint, SHARDS, error) from None
    sharded.load_state_dict({k: flat[f"weights.{k}"] for k in weights})
    for key in best:
        best[key] = flat[f"best.{key}"]
    for name, values in optimizer_state["state"].items():
        for key in values:
            values[key] = flat[f"optimizer.{name}.{key}"]
    set_optimizer_state_dict(sharded, optimizer, optimizer_state)
