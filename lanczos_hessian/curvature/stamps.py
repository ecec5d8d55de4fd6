"""What identifies a data set's contents without reading them: stamps of its tensors.

A pass's data fingerprint (:mod:`lanczos_hessian.curvature.fingerprint`) reads every sample;
a stamp reads none. Where the stamp of the data is the same as at the last pass, the samples
are the same and the last fingerprint stands (:meth:`DataSource.stamp
<lanczos_hessian.curvature.data.DataSource.stamp>`): for a tensor pair, each tensor's
:func:`layout`; for a list or tuple of batches, :class:`HeldTensors`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .inputs import input_tensors


def layout(t: torch.Tensor) -> tuple:
    """A tensor's storage address, shape, strides, version counter and device."""
    return t.data_ptr(), tuple(t.shape), t.stride(), t._version, str(t.device)


class HeldTensors:
    """The stamp of a list or tuple of batches: every tensor of every batch, held, with its
    :func:`layout`. Two stamps are equal when they hold the very same tensor objects (in
    the same order) with the same layouts and versions: the list's samples are then
    unchanged, as with a tensor pair's stamp. Held, no tensor of the earlier stamp is freed
    while it lives, so a new tensor cannot take its place at the same address unseen."""

    __slots__ = ("tensors", "layouts")

    def __init__(self, tensors: tuple):
        self.tensors = tensors
        self.layouts = tuple(layout(t) for t in tensors)

    @classmethod
    def of(cls, batches) -> "HeldTensors | None":
        """The stamp of ``batches``, or None where a batch is not a pair of tensors (a tuple
        or dict of tensors as inputs) and so cannot be identified by its tensors alone."""
        tensors = []
        for batch in batches:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                return None
            inputs, targets = batch
            parts = input_tensors(inputs) if isinstance(inputs, (torch.Tensor, tuple, list,
                                                                 Mapping)) else [inputs]
            for t in (*parts, targets):
                if not isinstance(t, torch.Tensor):
                    return None
                tensors.append(t)
        return cls(tuple(tensors))

    def __eq__(self, other) -> bool:
        return (isinstance(other, HeldTensors) and len(self.tensors) == len(other.tensors)
                and all(a is b for a, b in zip(self.tensors, other.tensors))
                and self.layouts == other.layouts)

    __hash__ = None
