"""What every rank must share before a multi-process operator is used, checked in one collective.

Under ``torch.distributed`` every rank builds the same operator from the same model and the
whole data set. At construction each rank summarizes what it holds in one row of
:data:`IDENTITY_WIDTH` floats (:func:`operator_identity`): the operator's kind and reduction,
the model's size, dtype and sums of its parameters and buffers, and the data's form, size and
sums. One gather (:func:`agree_across_ranks`) tells every rank whether another failed to build
its part (and fails with it) and whether all rows agree, raising
:class:`~lanczos_hessian.errors.RankMismatchError` naming the first difference.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import RankMismatchError
from ..parallel.distributed import gather_rows
from ..parallel.dtensor import is_sharded_parameter

IDENTITY_WIDTH = 16  # numbers per rank in the construction-time agreement check

IDENTITY = (
    # (name, index in the identity row, index of its scale or None for exact equality)
    ("operator kind", 0, None), ("loss reduction", 1, None),
    ("number of parameters", 2, None), ("model dtype size", 3, None),
    ("number of model tensors", 4, None), ("sum of the model's parameters and buffers", 5, 6),
    ("sum of their squares", 7, 7), ("position-weighted sum of the model's tensors", 8, 9),
    ("data form (0: tensor pair, 1: iterable)", 10, None),
    ("number of samples (tensor pair) or batches (iterable)", 11, None),
    ("sum of the inputs", 12, 13), ("sum of the targets", 14, 15),
)


def operator_identity(op) -> list:
    """What all ranks must share: the operator, a fingerprint of the model, the data."""
    tensors = [t.detach() for _, t in op.model.named_parameters()
               if not is_sharded_parameter(t)]  # shards differ: their layouts are checked
    tensors += [t.detach() for _, t in op.model.named_buffers()]
    tensors = [t for t in tensors if t.is_floating_point()]
    f64 = torch.float64
    sums = [float(torch.sum(t, dtype=f64)) for t in tensors]
    abs_sums = [float(torch.linalg.vector_norm(t, 1, dtype=f64)) for t in tensors]
    squares = [float(torch.linalg.vector_norm(t, 2, dtype=f64)) ** 2 for t in tensors]
    identity = [
        float(("hessian", "ggn", "residual").index(op.kind)),
        0.0 if op.reduction == "mean" else 1.0,
        float(op.space.dim), float(op.model_dtype.itemsize), float(len(tensors)),
        math.fsum(sums), math.fsum(abs_sums), math.fsum(squares),
        math.fsum((i + 1) * v for i, v in enumerate(sums)),
        math.fsum((i + 1) * v for i, v in enumerate(abs_sums)),
        *op.data.identity(),
    ]
    assert len(identity) == IDENTITY_WIDTH
    return identity


def agree_across_ranks(world, device, kind: str, identity, error) -> None:
    """One collective at construction: every rank learns whether any rank failed to build
    its part (and fails with it), and whether all ranks hold the same model and data.
    Single-process: re-raises ``error``."""
    if world.size == 1:
        if error is not None:
            raise error
        return
    row = np.zeros(IDENTITY_WIDTH) if identity is None else np.asarray(identity, float)
    rows = gather_rows(torch.from_numpy(row), error, device=device,
                       what=f"building the {kind} operator").numpy()
    for name, col, scale_col in IDENTITY:
        values = rows[:, col]
        if scale_col is None:
            same = bool(np.all(values == values[0]))
        else:
            tol = 1e-9 * float(np.max(np.abs(rows[:, scale_col]))) + 1e-300
            same = bool(np.all(np.isfinite(values))) and float(np.ptp(values)) <= tol
            same = same or bool(np.all((values == values[0])  # equal infinities/NaNs
                                       | (np.isnan(values) & np.isnan(values[0]))))
        if not same:
            listed = ", ".join(f"rank {r}: {v:.17g}" for r, v in enumerate(values))
            hint = ("pass the whole data set on every rank (the operator shards it "
                    "exactly itself)" if col >= 10 else
                    "build the model identically on every rank (seed its initialization, "
                    "load the same checkpoint everywhere, move it to the same dtype)")
            raise RankMismatchError(
                f"the {world.size} ranks disagree on the {name} ({listed}); {hint}")
