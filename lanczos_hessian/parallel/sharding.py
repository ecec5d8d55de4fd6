"""Lanczos vectors split across ranks: each rank owns a slice, dot products by all-reduce.

With ``W`` ranks, rank ``r`` owns rows ``[o_r, o_{r+1})`` of every Lanczos vector and of the
basis (an even split ``o_r = n r / W`` unless the operator declares another in its
``partition``), so the basis memory per rank is divided by ``W``. An operator that takes
products on its rows alone (a sharded model's Hessian, :mod:`lanczos_hessian.parallel.native`)
is handed this rank's rows; any other needs whole vectors: :class:`~lanczos_hessian.linalg.partition.ShardedMatvec` all-gathers the slices
(one collective), applies the data-parallel operator (its own one all-reduce), and keeps this
rank's slice of the product. Inner products are local partial sums followed by an all-reduce.

:class:`Shard` is the process-group side of :class:`~lanczos_hessian.linalg.partition.Whole`:
the numerical layer calls its ``sum`` and ``gather`` without knowing of ``torch.distributed``.
Without a process group it holds whole vectors.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..linalg.partition import Whole
from .distributed import current_world


class Shard(Whole):
    """This rank's slice ``[lo, hi)`` of vectors of length ``n``, reduced over the process group."""

    def __init__(self, n: int, rank: int | None = None, world_size: int | None = None,
                 offsets=None):
        world = current_world()
        super().__init__(n, world.rank if rank is None else rank,
                         world.size if world_size is None else world_size, offsets)

    def _all_reduce(self, total: torch.Tensor) -> None:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """The whole vector (or block) from every rank's slice (one all-gather)."""
        if not self.is_split:
            return x
        width = max(self.counts)
        padded = torch.zeros((width,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
        padded[: x.shape[0]] = x
        pieces = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(pieces, padded)
        return torch.cat([p[:c] for p, c in zip(pieces, self.counts)])
