"""Which rows of every vector this process holds, and the sums that complete its dot products.

The numerical layer is written once for two cases. Usually a process holds whole vectors
(:class:`Whole`): every method here is then the identity or a plain dot product. Under
``torch.distributed`` with sharded Lanczos vectors, process ``r`` of ``W`` holds rows
``[n r / W, n (r + 1) / W)`` of every vector, so that each inner product is a local partial sum
followed by a sum over processes, and the operator needs the rows gathered first
(:class:`lanczos_hessian.parallel.sharding.Shard` implements those two collectives).

:class:`ShardedMatvec` and :class:`~lanczos_hessian.linalg.basis.ShardedBasis` work with any
partition; this module imports no process group.
"""

from __future__ import annotations

import torch


class Whole:
    """Rows ``[lo, hi)`` of vectors of length ``n`` held here; here all of them.

    ``offsets`` (``world_size + 1`` row offsets from 0 to ``n``) is the operator's own split
    (:func:`lanczos_hessian.contract.partition_of`); default the even split.

    Subclasses that split the rows across processes override :meth:`_all_reduce` and
    :meth:`gather`.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1, offsets=None):
        self.n, self.rank, self.world_size = n, rank, world_size
        if offsets is None:  # the even split
            offsets = [n * r // world_size for r in range(world_size + 1)]
        if len(offsets) != world_size + 1 or offsets[0] != 0 or offsets[-1] != n:
            raise ValueError(f"row offsets {list(offsets)} do not split {n} rows over "
                             f"{world_size} processes")
        self.offsets = [int(x) for x in offsets]
        self.lo, self.hi = self.offsets[rank], self.offsets[rank + 1]
        self.counts = [b - a for a, b in zip(self.offsets, self.offsets[1:])]

    @property
    def is_split(self) -> bool:
        return self.world_size > 1

    @property
    def local_dim(self) -> int:
        return self.hi - self.lo

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """This process's rows of a whole vector or block."""
        return x[self.lo:self.hi] if self.is_split else x

    def sum(self, partial: torch.Tensor) -> torch.Tensor:
        """``partial`` summed over the processes that share the rows (a new float64 tensor)."""
        total = partial.to(torch.float64).clone()
        if self.is_split:
            self._all_reduce(total)
        return total

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """``a . b`` over the whole vectors."""
        return float(self.sum((a @ b).reshape(1))[0])

    def norm(self, a: torch.Tensor) -> float:
        return self.dot(a, a) ** 0.5

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """The whole vector (or block) from every process's rows."""
        if self.is_split:
            raise NotImplementedError(f"{type(self).__name__} cannot gather split rows")
        return x

    def _all_reduce(self, total: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot sum over processes")


def whole_or(partition, n: int) -> Whole:
    """``partition`` when it splits the rows, else whole vectors of length ``n``."""
    return partition if partition is not None and partition.is_split else Whole(n)


class ShardedMatvec:
    """``A V`` on row slices: gather the rows, apply ``A`` (one pass), keep this process's rows.

    An operator that takes products on its rows alone offers ``rows_product(offsets)``
    (returning ``apply_rows(V_rows) -> (A V)_rows``, or None for another split); then
    nothing is gathered.
    """

    def __init__(self, matvec, partition: Whole):
        self.inner, self.partition = matvec, partition
        self.dim, self.device = matvec.dim, matvec.device
        offer = getattr(matvec, "rows_product", None)
        self.rows = offer(partition.offsets) if callable(offer) else None

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
        if self.rows is not None:
            self.num_passes, self.num_vectors = self.num_passes + 1, self.num_vectors + V.shape[1]
            return self.rows(V.to(self.device))
        full = self.partition.gather(V.to(self.device))
        return self.partition.local(self.inner(full))
