"""Process-group helpers: who am I, which device, one flat all-reduce.

Everything here is a no-op without an initialized ``torch.distributed`` process group, so
single-process code paths carry no special cases. Under ``torchrun`` (or Slurm with the usual
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR`` variables) :func:`init_from_env`
starts the group: NCCL when CUDA is available, gloo otherwise. The *local* rank picks the
device; the *global* rank decides who writes files and prints progress (rank 0).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """Rank, local rank and size of the current process group (0, 0, 1 without one)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints (global rank 0)."""
        return self.rank == 0


def current_world() -> World:
    """The process group in use, or the trivial single-process world."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))
    return World(rank=dist.get_rank(), local_rank=local, size=dist.get_world_size())


def launched_distributed() -> bool:
    """True when the environment describes a multi-process launch (torchrun, Slurm)."""
    return int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1))) > 1


def init_from_env(timeout_s: float = 1800.0) -> World:
    """Start the process group from the launcher's environment, if there is one.

    Slurm's ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` are mapped to the variables
    ``torch.distributed`` reads. Returns the resulting :class:`World`.
    """
    if dist.is_available() and dist.is_initialized():
        return current_world()
    if "SLURM_PROCID" in os.environ and "RANK" not in os.environ:
        os.environ.setdefault("RANK", os.environ["SLURM_PROCID"])
        os.environ.setdefault("WORLD_SIZE", os.environ["SLURM_NTASKS"])
        os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
    if not launched_distributed():
        return World()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return current_world()


def default_device(world: World | None = None) -> torch.device:
    """``cuda:<local rank>`` when CUDA is available, else the CPU."""
    world = world or current_world()
    if torch.cuda.is_available():
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def all_reduce_sum(buffer: torch.Tensor) -> torch.Tensor:
    """Sum ``buffer`` over all ranks in place (one collective); identity without a group."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` with rank ``src``'s copy on every rank; identity without a group."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(tensor, src=src)
    return tensor
