"""Several processes, on one machine or several: `tsuika train --processes N` relaunches
itself under torchrun (`--machines M --machine-rank R --main-address HOST:PORT` for M
machines, the same command on each), as `torchrun` or `accelerate launch` given by hand do.

Accelerate reads the environment torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR) and wraps the
model in DistributedDataParallel, with the gloo backend on CPU (`train.fsdp` shards it
instead: `train/sharding.py`). Only the main process (global rank 0) writes the run's files;
the loop splits every global batch across processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from tsuika.errors import TsuikaError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _state():
    import torch
    from accelerate import PartialState

    # cpu=True matters: without it a CUDA build of torch on a GPU-less machine makes
    # Accelerate fall back to a single, non-distributed process.
    return PartialState(cpu=not torch.cuda.is_available())


def training_device():
    """This process's device: its GPU under CUDA (one per process), else the CPU."""
    return _state().device


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if world_size() > 1:
        _state().wait_for_everyone()


def from_main(value: str) -> str:
    """The main process's `value`, in every process (a run folder the main one named: other
    machines cannot see its disk to find it, and a name taken by an older run gets a suffix
    only the main process knows)."""
    if world_size() == 1:
        return value
    import torch.distributed

    _state()  # the process group, set up once
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


@dataclass(frozen=True)
class Machines:
    """`--machines M --machine-rank R --main-address HOST:PORT`: this machine's part."""

    count: int = 1
    rank: int = 0
    main_address: str | None = None

    def __post_init__(self) -> None:
        if self.count < 1:
            raise TsuikaError(f"--machines {self.count}: give at least 1")
        if not 0 <= self.rank < self.count:
            raise TsuikaError(
                f"--machine-rank {self.rank}: give 0 to {self.count - 1} (0 on the main machine)"
            )
        if self.count > 1 and not self.main_address:
            raise TsuikaError(
                f"--machines {self.count}: add --main-address HOST:PORT, the main machine's "
                "address and a free port that every machine can reach"
            )
        if self.main_address is not None:
            host, _, port = self.main_address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise TsuikaError(
                    f"--main-address {self.main_address}: give HOST:PORT, e.g. 10.0.0.1:29500"
                )

    def torchrun_arguments(self, processes: int) -> list[str]:
        if self.count == 1:
            return ["--standalone", f"--nproc_per_node={processes}"]
        host, _, port = str(self.main_address).rpartition(":")
        return [
            f"--nnodes={self.count}",
            f"--node_rank={self.rank}",
            f"--master_addr={host}",
            f"--master_port={port}",
            f"--nproc_per_node={processes}",
        ]


def launch(args: list[str], processes: int, machines: Machines = Machines()) -> int:
    """Run `tsuika train ARGS` in `processes` processes on this machine, part of
    `machines`; the main process names the run folder and tells the others."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *machines.torchrun_arguments(processes),
        "-m",
        "tsuika.cli",
        "train",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.call(command, env=env)
