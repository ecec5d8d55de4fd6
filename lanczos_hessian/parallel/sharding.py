"""Lanczos vectors split across ranks: each rank owns a slice, dot products by all-reduce.

With ``W`` ranks, rank ``r`` owns rows ``[n r / W, n (r + 1) / W)`` of every Lanczos vector and
of the basis, so the basis memory per rank is divided by ``W``. The operator still needs whole
vectors: :class:`ShardedMatvec` all-gathers the slices (one collective), applies the
data-parallel operator (its own one all-reduce), and keeps this rank's slice of the product.
Inner products are local partial sums followed by an all-reduce (:meth:`Shard.sum`).

Without a process group every function here is the identity on whole vectors.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .distributed import current_world


class Shard:
    """This rank's slice ``[lo, hi)`` of vectors of length ``n``, and the reductions over ranks."""

    def __init__(self, n: int, rank: int | None = None, world_size: int | None = None):
        world = current_world()
        self.n = n
        self.rank = world.rank if rank is None else rank
        self.world_size = world.size if world_size is None else world_size
        self.lo = n * self.rank // self.world_size
        self.hi = n * (self.rank + 1) // self.world_size
        self.counts = [n * (r + 1) // self.world_size - n * r // self.world_size
                       for r in range(self.world_size)]

    @property
    def is_split(self) -> bool:
        return self.world_size > 1

    @property
    def local_dim(self) -> int:
        return self.hi - self.lo

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a whole vector or block."""
        return x[self.lo:self.hi] if self.is_split else x

    def sum(self, partial: torch.Tensor) -> torch.Tensor:
        """Sum of ``partial`` over ranks (a new tensor; float64)."""
        total = partial.to(torch.float64).clone()
        if self.is_split:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """``a . b`` over the whole vectors."""
        return float(self.sum((a @ b).reshape(1))[0])

    def norm(self, a: torch.Tensor) -> float:
        return self.dot(a, a) ** 0.5

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


class ShardedMatvec:
    """``A V`` on row slices: gather the slices, apply ``A`` (one pass), keep this rank's rows."""

    def __init__(self, matvec, shard: Shard):
        self.inner, self.shard = matvec, shard
        self.dim, self.device = matvec.dim, matvec.device

    @property
    def num_passes(self):
        return self.inner.num_passes

    @num_passes.setter
    def num_passes(self, value):
        self.inner.num_passes = value

    @property
    def num_vectors(self):
        return self.inner.num_vectors

    @num_vectors.setter
    def num_vectors(self, value):
        self.inner.num_vectors = value

    def __call__(self, V: torch.Tensor) -> torch.Tensor:
        full = self.shard.gather(V.to(self.device))
        return self.shard.local(self.inner(full))


class ShardedBasis:
    """A basis store holding this rank's rows; Gram-Schmidt coefficients summed over ranks."""

    def __init__(self, local, shard: Shard):
        self.local_store, self.shard = local, shard
        self.capacity = local.capacity

    @property
    def size(self) -> int:
        return self.local_store.size

    def append(self, q):
        self.local_store.append(q)

    def project(self, w):
        return self.shard.sum(self.local_store.project(w)).to(w.device)

    def subtract(self, w, h):
        return self.local_store.subtract(w, h)

    def orthogonalize(self, w):
        """Classical Gram-Schmidt twice in three sweeps of the local rows; each ``Q^T w`` is
        one all-reduce of ``j`` numbers."""
        h = self.project(w)
        w, h2_local = self.local_store.subtract_project(w, h)
        h2 = self.shard.sum(h2_local).to(w.device)
        return self.subtract(w, h2), h + h2

    def combine(self, S):
        return self.local_store.combine(S)

    def restart(self, S):
        self.local_store.restart(S)

    def state(self) -> dict:
        return self.local_store.state()
