"""A batch's curvature product as the per-parameter tensors the differentiation gives.

The strategies of :mod:`lanczos_hessian.curvature.differentiation` return their products in
this form, not flattened, and the pass adds the pieces into its float64 sums parameter by
parameter (:mod:`lanczos_hessian.curvature.accumulation`).
"""

from __future__ import annotations

import torch

from .params import ParameterSpace


class BlockProduct:
    """A batch's product ``C_B V`` with a block ``V`` ``(M, b)``, as the per-parameter tensors
    the differentiation returns (the pass adds them into its float64 sums parameter by
    parameter, :mod:`lanczos_hessian.curvature.accumulation`: flattening each batch's
    product into one ``(M, b)`` tensor first was a copy per batch, measured at a third of the
    time outside the product on a 1M-parameter MLP). Two layouts:

    * ``by_column``: ``pieces[j][k]`` is column ``j``'s part for parameter ``k``, of the
      parameter's shape (reverse mode, and single vectors);
    * not ``by_column``: ``pieces[k]`` is parameter ``k``'s part of every column,
      ``(b, *shape)`` (a ``vmap`` over the block).
    """

    __slots__ = ("pieces", "by_column")

    def __init__(self, pieces: list, by_column: bool):
        self.pieces, self.by_column = pieces, by_column

    def tensors(self) -> list:
        """Every piece, in one list."""
        if self.by_column:
            return [t for column in self.pieces for t in column]
        return list(self.pieces)

    def joined(self, space: ParameterSpace) -> torch.Tensor:
        """The flat block ``(M, b)`` (a copy)."""
        if self.by_column:
            return _as_block([space.join(column) for column in self.pieces])
        return space.join(self.pieces, batched=True)

    def all_finite(self) -> bool:
        """Whether every entry is finite (one device sync per piece)."""
        return all(bool(torch.isfinite(t).all()) for t in self.tensors())

    def __sub__(self, other: "BlockProduct") -> "BlockProduct":
        """The piecewise difference of two products of one block (in the layout ``(b,
        *shape)`` per parameter where the two layouts differ)."""
        if self.by_column and other.by_column:
            return BlockProduct([[a - b for a, b in zip(mine, theirs)]
                                 for mine, theirs in zip(self.pieces, other.pieces)], True)
        return BlockProduct([a - b for a, b in zip(self.by_parameter(), other.by_parameter())],
                            False)

    def by_parameter(self) -> list:
        """Per parameter, every column's part, ``(b, *shape)`` (stacked from the columns of
        the other layout)."""
        if not self.by_column:
            return list(self.pieces)
        return [torch.stack(parts) for parts in zip(*self.pieces)]

    def clone(self) -> "BlockProduct":
        """A copy of every piece (outputs of a CUDA graph, before its next replay)."""
        if self.by_column:
            return BlockProduct([[t.clone() for t in column] for column in self.pieces], True)
        return BlockProduct([t.clone() for t in self.pieces], False)


def _as_block(columns: list) -> torch.Tensor:
    """``(M, b)`` from ``b`` flat columns: a view of one column, else the transpose of the
    contiguous ``(b, M)`` stack."""
    if len(columns) == 1:
        return columns[0].unsqueeze(1)
    return torch.stack(columns).T
