"""Blocks of the parameter vector: named sets of coordinates of an operator's flat space.

A block ``b`` is a set of coordinates ``I_b`` of the flat parameter vector (the operator's
:class:`~lanczos_hessian.curvature.params.ParameterSpace`); its diagonal block of the
curvature is ``H_bb = H[I_b, I_b]``. A block is named by the user and selected by any union of

* a module prefix or a parameter name (``"transformer.h.0.mlp"``, ``"fc1.weight"``);
* a regular expression over parameter names (:class:`Regex`, or a string ``"re:<pattern>"``);
* a slice of one parameter along one axis (:class:`Slice`): the query rows of
  ``nn.MultiheadAttention.in_proj_weight`` (axis 0), the key columns of GPT-2's ``c_attn``
  weight (a ``Conv1D``, axis 1), one head's part of either.

:func:`resolve_blocks` turns the named selections into index tensors and refuses, before any
pass over the data, a selection that matches nothing and blocks that overlap, naming them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import InvalidModelError


@dataclass(frozen=True)
class Regex:
    """Every selected parameter whose full name matches ``pattern`` (``re.search``)."""

    pattern: str


@dataclass(frozen=True)
class Slice:
    """Entries ``start <= i < stop`` along ``axis`` of the parameter ``param``."""

    param: str
    axis: int
    start: int
    stop: int


@dataclass(frozen=True)
class Block:
    """A named block: the union of its selections (strings, :class:`Regex`, :class:`Slice`)."""

    name: str
    select: tuple

    def __init__(self, name: str, *select):
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"a block's name must be a non-empty string without '/', "
                             f"got {name!r}")
        if not select:
            raise ValueError(f"block {name!r} selects nothing: give at least one selection")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "select", tuple(select))


@dataclass(frozen=True)
class ResolvedBlock:
    """A block's coordinates ``indices`` (ascending, int64) in the operator's flat space."""

    name: str
    indices: torch.Tensor

    @property
    def dim(self) -> int:
        return int(self.indices.numel())


def as_blocks(blocks) -> list:
    """``blocks`` as a list of :class:`Block`: a list of blocks, or a dict
    ``{name: selection or list of selections}``."""
    if isinstance(blocks, dict):
        return [Block(name, *(sel if isinstance(sel, (list, tuple)) else (sel,)))
                for name, sel in blocks.items()]
    blocks = list(blocks)
    if not blocks or not all(isinstance(b, Block) for b in blocks):
        raise TypeError("blocks must be a non-empty list of Block or a dict name -> selection")
    return blocks


def resolve_blocks(space, blocks) -> list:
    """The :class:`ResolvedBlock` of each block in ``space``; :class:`InvalidModelError`
    naming a block or selection that matches nothing, a duplicate name, or two blocks that
    share a coordinate."""
    resolved, owner = [], torch.full((space.dim,), -1, dtype=torch.long)
    for number, block in enumerate(as_blocks(blocks)):
        if any(r.name == block.name for r in resolved):
            raise InvalidModelError(f"two blocks are named {block.name!r}")
        parts = [_indices(space, block.name, sel) for sel in block.select]
        indices = torch.unique(torch.cat(parts))  # sorted, a selection repeated is one
        taken = owner[indices]
        if bool((taken >= 0).any()):
            other = resolved[int(taken[taken >= 0][0])].name
            raise InvalidModelError(
                f"blocks {other!r} and {block.name!r} overlap: they share "
                f"{int((taken >= 0).sum())} coordinates; diagonal blocks must be disjoint")
        owner[indices] = number
        resolved.append(ResolvedBlock(block.name, indices))
    return resolved


def _indices(space, name: str, selection) -> torch.Tensor:
    """Flat coordinates of one selection of block ``name``."""
    if isinstance(selection, str) and selection.startswith("re:"):
        selection = Regex(selection[3:])
    if isinstance(selection, Slice):
        return _slice_indices(space, name, selection)
    if isinstance(selection, Regex):
        pattern = re.compile(selection.pattern)
        chosen = [i for i, n in enumerate(space.names) if pattern.search(n)]
    elif isinstance(selection, str):
        chosen = [i for i, n in enumerate(space.names)
                  if n == selection or n.startswith(selection + ".")]
    else:
        raise TypeError(f"block {name!r}: a selection is a module prefix or parameter name, "
                        f"a Regex or a Slice, got {type(selection).__name__}")
    if not chosen:
        raise InvalidModelError(
            f"block {name!r}: {selection!r} matches no selected parameter; parameters: "
            f"{', '.join(space.names[:12])}{' ...' if len(space.names) > 12 else ''}")
    return torch.cat([torch.arange(space.offsets[i], space.offsets[i + 1]) for i in chosen])


def _slice_indices(space, name: str, s: Slice) -> torch.Tensor:
    if s.param not in space.names:
        raise InvalidModelError(f"block {name!r}: no selected parameter named {s.param!r}")
    i = space.names.index(s.param)
    shape = space.shapes[i]
    if not -len(shape) <= s.axis < len(shape):
        raise InvalidModelError(f"block {name!r}: {s.param!r} has shape {tuple(shape)}, no "
                                f"axis {s.axis}")
    size = shape[s.axis]
    if not 0 <= s.start < s.stop <= size:
        raise InvalidModelError(
            f"block {name!r}: slice [{s.start}:{s.stop}] of axis {s.axis} of {s.param!r} "
            f"(length {size}) is empty or out of range")
    local = torch.arange(shape.numel()).view(shape).narrow(s.axis, s.start, s.stop - s.start)
    return local.reshape(-1) + space.offsets[i]
