"""The order of an operator's coordinates when its model's parameters are sharded.

A curvature operator of a model held whole acts on vectors in **parameter order**: the
selected parameters flattened and concatenated in ``model.named_parameters()`` order
(:class:`~lanczos_hessian.curvature.params.ParameterSpace`). When the parameters are
sharded over ``W`` ranks as ``Shard(0)`` on a one-dimensional mesh (FSDP2's ``fully_shard``,
``distribute_tensor``), rank ``r`` holds rows ``[a_{p,r}, b_{p,r})`` of every parameter
``p``, cut as DTensor cuts them (``torch.chunk``: ``c_p = ceil(d_p / W)`` rows per rank, the
last ranks' chunks shorter or empty)::

    a_{p,r} = min(r c_p, d_p),    b_{p,r} = min((r + 1) c_p, d_p)

The operator's coordinates are then **shard-major**: rank 0's shards of every parameter (in
parameter order, each flattened), then rank 1's, ... So rank ``r``'s contiguous rows
``[o_r, o_{r+1})`` of every Lanczos vector (the partition the operator declares,
:meth:`ShardLayout.offsets`) are exactly the numbers of its own shards, and a product taken
on the shards needs no vector of full length. With ``W = 1`` both orders are the same.
A parameter with no rows (a scalar) counts as one row.

:meth:`ShardLayout.to_parameters` maps a vector or a block of columns (numpy or torch) from
the operator's order to parameter order, :meth:`ShardLayout.from_parameters` back; a
permutation, so eigenvalues, spectral densities and dot products do not depend on the order,
eigenvectors do (run files say which: the ``vector_order`` attribute).

>>> layout = ShardLayout([(3, 2), (3,)], world_size=2)   # a 3 x 2 weight and a bias
>>> layout.offsets                                       # rank 0: rows 0-1 of each
[0, 6, 9]
>>> import numpy as np
>>> layout.to_parameters(np.arange(9)).tolist()          # shard-major -> parameter order
[0, 1, 2, 3, 6, 7, 4, 5, 8]
>>> layout.from_parameters(layout.to_parameters(np.arange(9))).tolist()
[0, 1, 2, 3, 4, 5, 6, 7, 8]
>>> layout.locate([4, 6]).tolist()                      # where parameter entries sit
[6, 4]
"""

from __future__ import annotations

import math

import torch

__all__ = ["ShardLayout", "parameter_order", "operator_indices", "shard_rows"]


def shard_rows(rows: int, world_size: int, rank: int) -> tuple:
    """Rows ``[a, b)`` of a parameter with ``rows`` rows that rank ``rank`` of ``world_size``
    holds under ``Shard(0)`` (DTensor's chunking: ``ceil(rows / W)`` per rank, the last
    chunks shorter or empty)."""
    chunk = -(-rows // world_size)
    return min(rank * chunk, rows), min((rank + 1) * chunk, rows)


class ShardLayout:
    """The map between shard-major coordinates and parameter order (module docstring).

    Parameters
    ----------
    shapes : sequence of shapes
        The full (global) shape of each parameter, in parameter order.
    world_size : int
        The number of ranks ``W`` the parameters are sharded over (``1``: one order).
    """

    def __init__(self, shapes, world_size: int):
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.world_size = int(world_size)
        numels = [math.prod(s) for s in self.shapes]
        starts = [0]
        for numel in numels:
            starts.append(starts[-1] + numel)
        self.dim = starts[-1]
        #: ``(shard-major start, parameter-order start, length)`` of each contiguous run
        self.segments = []
        self.rows = []  # per rank: per parameter, rows [a, b)
        offsets, position = [0], 0
        for rank in range(self.world_size):
            ranges = []
            for shape, numel, start in zip(self.shapes, numels, starts):
                rows = shape[0] if shape else 1
                a, b = shard_rows(rows, self.world_size, rank)
                width = numel // rows if rows else 0
                ranges.append((a, b))
                if b > a and width:
                    self.segments.append((position, start + a * width, (b - a) * width))
                    position += (b - a) * width
            self.rows.append(ranges)
            offsets.append(position)
        self.offsets = offsets

    @property
    def is_identity(self) -> bool:
        """Whether shard-major order is parameter order (one rank)."""
        return self.world_size == 1

    @property
    def order(self) -> str:
        """``"parameter"`` (one rank) or ``"shard-major"``: what run files record as the
        ``vector_order`` of their vectors."""
        return "parameter" if self.is_identity else "shard-major"

    def local_shapes(self, rank: int) -> list:
        """The shape of rank ``rank``'s shard of each parameter."""
        return [((b - a),) + shape[1:] if shape else (b - a,)
                for shape, (a, b) in zip(self.shapes, self.rows[rank])]

    def locate(self, indices):
        """The shard-major positions of parameter-order ``indices`` (an int numpy array):
        where entry ``i`` of a parameter-order vector sits in the operator's order."""
        import numpy as np

        indices = np.asarray(indices, dtype=np.int64)
        if self.is_identity or not self.segments:
            return indices
        order = sorted(self.segments, key=lambda s: s[1])
        starts = np.array([s[1] for s in order], dtype=np.int64)
        mine = np.array([s[0] for s in order], dtype=np.int64)
        where = np.searchsorted(starts, indices, side="right") - 1
        return mine[where] + indices - starts[where]

    def to_parameters(self, x):
        """``x`` (``(M,)`` or ``(M, b)``, numpy or torch) from shard-major to parameter order."""
        return self._reordered(x, to_parameters=True)

    def from_parameters(self, x):
        """``x`` (``(M,)`` or ``(M, b)``, numpy or torch) from parameter to shard-major order."""
        return self._reordered(x, to_parameters=False)

    def _reordered(self, x, to_parameters):
        """A copy of ``x`` with every segment moved between its shard-major rows ``mine`` and
        its parameter-order rows ``theirs`` (``x`` itself when the orders coincide)."""
        if self.is_identity:
            return x
        out = x.clone() if hasattr(x, "clone") else x.copy()
        for mine, theirs, length in self.segments:
            src, dst = (mine, theirs) if to_parameters else (theirs, mine)
            out[dst:dst + length] = x[src:src + length]
        return out


def parameter_order(op, x):
    """An operator's vector or block ``x`` (e.g. eigenvectors, columns) in parameter order:
    ``op.layout.to_parameters(x)`` for an operator of a sharded model, ``x`` otherwise."""
    layout = getattr(op, "layout", None)
    return x if layout is None else layout.to_parameters(x)


def operator_indices(op, indices):
    """The operator's coordinates of parameter-order ``indices`` (a torch int tensor, e.g.
    a block's rows): ``indices`` unless ``op`` is shard-major."""
    layout = getattr(op, "layout", None)
    if layout is None or layout.is_identity:
        return indices
    return layout.to_parameters(torch.arange(layout.dim))[indices]
