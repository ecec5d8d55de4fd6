"""Adapters from what users pass (operators, matrices, callables) to a torch block matvec.

The solvers work on ``(n, b)`` float64 tensors. A torch-native operator (an object with
``apply(V) -> A V`` on tensors, a ``shape`` and a ``device``, e.g. a
:class:`~lanczos_hessian.curvature.operators.CurvatureOperator`) is used through ``apply``
(vectors stay on the model's device), and its ``common_seed()``, when it has one, seeds the
random vectors of unseeded runs (so that every rank of a data-parallel operator draws the
same ones); any other
``scipy.sparse.linalg.LinearOperator``, a dense ``numpy`` array or ``torch`` tensor, or a
callable ``matvec(x: ndarray (n,)) -> ndarray (n,)`` goes through numpy on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, aslinearoperator


@dataclass
class BlockMatvec:
    """``apply(V) -> A V`` on ``(n, b)`` float64 tensors, counting passes and vectors.

    ``draw_seed()`` gives the seed of an unseeded run: fresh entropy, or for an operator
    shared by several processes the same entropy on all of them.
    """

    apply_fn: object
    dim: int
    device: torch.device
    num_passes: int = 0
    num_vectors: int = 0
    draw_seed: object = field(default=None, repr=False)
    precision: object = torch.float64  # the dtype the products are computed in
    rows_product: object = field(default=None, repr=False)  # ShardedMatvec's, if offered

    def __post_init__(self):
        if self.draw_seed is None:
            self.draw_seed = fresh_seed

    def __call__(self, V: torch.Tensor) -> torch.Tensor:
        self.num_passes += 1
        self.num_vectors += V.shape[1]
        return self.apply_fn(V)


def as_block_matvec(op, dim: int | None = None) -> BlockMatvec:
    """Wrap ``op`` (see module docstring) as a :class:`BlockMatvec`.

    ``dim`` is required only for a bare callable, whose size cannot be known otherwise.
    """
    if _is_torch_native(op):
        return BlockMatvec(lambda V: op.apply(V), op.shape[0], op.device,
                           draw_seed=getattr(op, "common_seed", None),
                           precision=getattr(op, "model_dtype", torch.float64),
                           rows_product=getattr(op, "rows_product", None))
    if isinstance(op, torch.Tensor):
        _check_square(tuple(op.shape))
        A = op.to(torch.float64)
        return BlockMatvec(lambda V: A @ V.to(A.device), A.shape[0], A.device)
    if isinstance(op, (np.ndarray, LinearOperator)) or hasattr(op, "shape") and hasattr(op, "dot"):
        lin = aslinearoperator(op)
        _check_square(lin.shape)
        return BlockMatvec(_numpy_block(lin.matmat), lin.shape[0], torch.device("cpu"))
    if callable(op):
        if dim is None:
            raise ValueError("a bare matvec callable needs its dimension: pass dim=n (or v0)")
        return BlockMatvec(_numpy_columns(op), dim, torch.device("cpu"))
    raise TypeError(
        f"expected a LinearOperator, a square matrix or a matvec callable, got {type(op).__name__}"
    )


def precision_floor(dtype) -> float:
    """The relative residual ``||A y - theta y|| / ||A||`` below which products computed in
    ``dtype`` cannot be trusted: ``4 eps`` (4.8e-7 for float32, 8.9e-16 for float64).

    Each product carries a relative rounding error of at least a few ``eps`` (the per-batch
    products are in ``dtype``; the batches are summed in float64), so a tolerance below this
    asks for residuals that rounding alone exceeds. Above it, whether the products resolve the
    tolerance depends on the model (measured float32 residuals reach 7e-7 of ``|theta|`` on
    the CNN of ``scripts/bench_hvp.py`` and 2e-5 of ``||H||`` on the demo network's small
    eigenvalues), which is why the measured residual, when asked for, decides convergence.
    """
    return 4.0 * float(torch.finfo(dtype).eps)


def fresh_seed() -> int:
    """A 63-bit seed from fresh operating-system entropy (an int64 attribute can hold it)."""
    return int(np.random.default_rng().integers(2**63))


def _is_torch_native(op) -> bool:
    return (isinstance(op, LinearOperator) and callable(getattr(op, "apply", None))
            and isinstance(getattr(op, "device", None), torch.device))


def _check_square(shape):
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"the operator must be square, got shape {shape}")


def _numpy_block(matmat):
    def apply(V):
        out = np.asarray(matmat(V.detach().cpu().numpy()), dtype=np.float64)
        return torch.from_numpy(out.reshape(V.shape)).to(V.device)

    return apply


def _numpy_columns(matvec):
    def apply(V):
        X = V.detach().cpu().numpy()
        cols = [np.asarray(matvec(X[:, j]), dtype=np.float64).reshape(-1)
                for j in range(X.shape[1])]
        return torch.from_numpy(np.stack(cols, axis=1)).to(V.device)

    return apply
