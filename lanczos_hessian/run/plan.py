"""The plan of a run, decided once before any work: this process's role, the settings a
resume must match, the seeds.

The role (:class:`Role`) is one of four, from the file and the process group:

=================  ======================================  =================================
this process       bases                                   checkpoint / records
=================  ======================================  =================================
no file            its own: memory, or a scratch file      none
writer             the run's file (on disk, or in memory   commits every step; records the
                   mirrored to it)                         steps and the results (rank 0)
replica            its own copy                            on resume, the committed state
                                                           read before rank 0 reopens
shard              its rows, in its own file               commits its rows every step
=================  ======================================  =================================

Everything the plan knows of the operator comes through :mod:`lanczos_hessian.contract`:
its size, its device, its partition of the rows across ranks and its identity (provenance
and fingerprints, plain dicts).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import torch

from .. import validate
from ..contract import device_of, identity_of, partition_of
from ..errors import BasisSizeError, ResumeError
from ..linalg.basis import BYTES, choose_location, working_bytes
from ..parallel.distributed import current_world
from ..parallel.sharding import Shard
from ..storage.hdf5 import DEFAULT_RESERVE, check_resume_path, format_bytes

__all__ = ["Role", "decide_role", "provenance", "identity_settings", "EIGS_IDENTITY",
           "SLQ_IDENTITY", "check_seed", "reserve_bytes"]

#: The parts of an operator's identity a run's settings hold (checked on resume), per run:
#: what it computes, and what decides the order of its float sums (``batch_size``,
#: ``strategy``, ``allow_tf32``, ``device``), so that a resume that is accepted continues
#: the run bit for bit (docs/FORMAT.md, "The resume identity").
EIGS_IDENTITY = ("operator", "num_params", "reduction", "model_dtype", "model", "strategy",
                 "allow_tf32", "batch_size", "device")
SLQ_IDENTITY = ("operator", "num_params", "model", "strategy", "allow_tf32", "batch_size",
                "device")


def provenance(op, seed=None, identity=None, **extra) -> dict:
    """Attributes that say what produced a file: what the operator offers as its provenance
    (:func:`~lanczos_hessian.contract.identity_of`), the run's seed and the machine."""
    world = current_world()
    identity = identity_of(op) if identity is None else identity
    attrs = {**identity["provenance"], "world_size": world.size, "seed": seed,
             "hostname": platform.node()}
    attrs.update(extra)
    return attrs


def identity_settings(identity: dict, keys) -> dict:
    """The ``keys`` of an identity (provenance and fingerprints) that it offers."""
    offered = {**identity["provenance"], **identity["fingerprints"]}
    return {key: offered[key] for key in keys if key in offered}


def check_seed(seed) -> None:
    """A run's seed is a non-negative integer (or None: fresh entropy), checked before any
    file is created."""
    validate.seed("seed", seed, flag="--seed")


def reserve_bytes(rows: int, disk_vectors: int) -> int:
    """Bytes a run's writer keeps free for a clean close when the disk fills: what HDF5 may
    hold unwritten at that moment, at most one chunk cache (1 MiB) per dataset a commit
    writes (the bases, the state's slots, the step records), at most 64 of them."""
    return DEFAULT_RESERVE + min(disk_vectors + 12, 64) * min(rows * 8, 1 << 20)


@dataclass
class Role:
    """What this process is in the run (decided once): the module docstring's table."""

    op: object
    out: object
    shard: Shard | None
    location: str
    main: bool
    resume: bool

    @property
    def device(self):
        return device_of(self.op)

    @property
    def rows(self) -> int:
        return self.shard.local_dim if self.shard else self.op.shape[0]

    @property
    def has_file(self) -> bool:
        """This process keeps its own state file: rank 0, or every rank when sharded."""
        return self.out is not None and (self.main or self.shard is not None)

    @property
    def replica(self) -> bool:
        return self.out is not None and not self.has_file

    @property
    def records(self) -> bool:
        """This process writes the step records and results (rank 0 of a run with a file)."""
        return self.out is not None and self.main


def available_memory(device) -> int | None:
    """Bytes free for new tensors on ``device``: a GPU's free memory (with what torch's
    allocator caches), or the host's
    available memory (``MemAvailable``, else its physical memory); None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + cached  # torch's cache is free too
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_basis_memory(rows: int, basis_vectors: int, device, named: str) -> None:
    """Refuse, naming the option that sized them (``named``, e.g. ``"--ncv 200000"``),
    bases of ``basis_vectors`` vectors of ``rows`` float64 values that would not fit in
    the memory of ``device`` beside the working vectors: before anything is allocated."""
    need = rows * basis_vectors * BYTES + working_bytes(rows)
    free = available_memory(device)
    if free is not None and need > free:
        raise BasisSizeError(
            f"{named}: the Lanczos basis would hold {basis_vectors} vectors of {rows} float64 "
            f"values, {format_bytes(need)} with the working vectors, but {device} has "
            f"{format_bytes(free)} free; ask for a smaller basis, or pass --memory-budget "
            "(memory_budget) to keep it on disk in the --out file")


def decide_role(op, out, shard_vectors, basis_vectors, memory_budget, resume,
                named: str = "the basis size") -> Role:
    """The run's role for this process; ``basis_vectors`` is how many vectors its bases
    hold (where they live follows ``memory_budget``; without one they go to the device,
    checked to fit: :func:`check_basis_memory`, naming the option ``named``)."""
    world = current_world()
    if resume and out is None:
        raise ResumeError("resuming needs the run's file (--out)")
    if resume:
        check_resume_path(out)
    n = op.shape[0]
    shard = (Shard(n, offsets=partition_of(op, world.size))
             if shard_vectors and world.size > 1 else None)
    rows = shard.local_dim if shard else n
    location = choose_location(rows, basis_vectors, memory_budget, device_of(op))
    if location == "device":
        check_basis_memory(rows, basis_vectors, device_of(op), named)
    return Role(op, out, shard, location, world.is_main, resume)
