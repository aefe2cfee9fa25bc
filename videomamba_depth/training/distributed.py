"""Process-group set-up for DDP under ``torchrun``; a single process needs nothing.

``torchrun --nproc_per_node N -m stages.train`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without
them the run is one process and no process group is created, so the same command works either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from videomamba_depth.devices import resolve_device


@dataclass(frozen=True)
class Distributed:
    """Where this process runs and which share of the work is its own."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, validates and writes checkpoints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def setup(device: str) -> Distributed:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on CUDA); pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    resolved = resolve_device(device, "train.device")
    if resolved.type == "cuda":
        resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    return Distributed(rank, world_size, resolved)


def teardown(context: Distributed) -> None:
    if context.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
