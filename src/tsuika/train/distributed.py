"""Data-parallel runs: `tsuika train --processes N` relaunches itself under torchrun.

Accelerate reads the environment torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR) and wraps the
model in DistributedDataParallel, with the gloo backend on CPU. Only the main process writes
files; the loop splits every global batch across processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def training_device():
    """This process's device: its GPU under CUDA (one per process), else the CPU."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available()).device


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if world_size() > 1:
        import torch
        from accelerate import PartialState

        # cpu=True matters: without it a CUDA build of torch on a GPU-less machine makes
        # Accelerate fall back to a single, non-distributed process.
        PartialState(cpu=not torch.cuda.is_available()).wait_for_everyone()


def launch(args: list[str], processes: int, name: str | None) -> int:
    """Run `tsuika train ARGS` in `processes` processes; all write to one run folder, whose
    name is fixed here so that every process agrees on it."""
    if name is None:
        name = f"ddp-{time.strftime('%Y%m%d-%H%M%S')}"
        args = [*args, f"name={name}"]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "tsuika.cli",
        "train",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.call(command, env=env)
