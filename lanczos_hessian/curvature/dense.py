"""Exact dense curvature matrices of small models, and their full spectra.

The seed paper (Sagun et al. 2018) computes exact Hessians of networks of a few thousand
parameters; this module does the same, independently of the matrix-free products: the
Hessian by ``torch.func.hessian``-style double ``jacrev`` of the loss as a function of the
flat parameter vector, the GGN as ``J^T H_loss J`` from explicit Jacobians. Each batch's
matrix is accumulated in float64 with the same weights as the operators (``|B|/N`` for a
mean-reduced loss, 1 for a sum), so a dense matrix is the reference the operators are
tested against.

Memory is ``M^2`` float64 values (and a batch Jacobian of ``|B| * outputs * M``); above
``max_dim`` parameters a :class:`DenseSizeError` is raised before any work.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.func import hessian, jacrev

from ..parallel.distributed import all_reduce_sum
from ..errors import DenseSizeError
from .data import call_model
from .kernels import twice_differentiable
from .operators import CurvatureOperator, evaluation_mode
from .precision import tf32_mode

DEFAULT_MAX_DIM = 12_000  # 12k x 12k float64 is 1.15 GB


def dense_matrix(op: CurvatureOperator, max_dim: int = DEFAULT_MAX_DIM,
                 method: str = "autodiff", block_size: int = 128) -> np.ndarray:
    """The exact ``(M, M)`` float64 matrix that ``op`` represents (Hessian, GGN or residual).

    ``method="autodiff"`` differentiates twice with ``torch.func`` (independent of the
    matrix-free products: the reference they are tested against); ``method="products"``
    applies the operator to the identity, ``block_size`` columns per data pass (faster for
    networks whose batch is cheap, and exactly the matrix the solvers see).
    Raises :class:`DenseSizeError` if ``M > max_dim``; raise the limit to go further.
    """
    if method not in ("autodiff", "products"):
        raise ValueError(f"unknown method {method!r}; choose 'autodiff' or 'products'")
    dim = op.shape[0]
    if dim > max_dim:
        raise DenseSizeError(
            f"a dense {op.kind} of a model with {dim} parameters needs "
            f"{dim * dim * 8 / 2**30:.1f} GiB; the limit is max_dim={max_dim} parameters "
            "(raise it to go on, or use the matrix-free operator)"
        )
    if method == "products":
        return _by_products(op, block_size)
    if op.kind == "hessian":
        return _accumulate(op, _batch_hessian)
    if op.kind == "ggn":
        return _accumulate(op, _batch_ggn)
    return _accumulate(op, _batch_hessian) - _accumulate(op, _batch_ggn)


def dense_spectrum(op: CurvatureOperator, max_dim: int = DEFAULT_MAX_DIM,
                   method: str = "autodiff") -> np.ndarray:
    """All ``M`` eigenvalues of the dense matrix, ascending (``numpy.linalg.eigvalsh``)."""
    return np.linalg.eigvalsh(dense_matrix(op, max_dim, method))


def _by_products(op: CurvatureOperator, block_size: int) -> np.ndarray:
    dim = op.shape[0]
    columns = []
    for start in range(0, dim, block_size):
        stop = min(start + block_size, dim)
        E = torch.zeros(dim, stop - start, dtype=torch.float64)
        E[torch.arange(start, stop), torch.arange(stop - start)] = 1.0
        columns.append(op.apply(E).cpu().numpy())
    return np.concatenate(columns, axis=1)


def _accumulate(op: CurvatureOperator, batch_matrix) -> np.ndarray:
    dim = op.shape[0]
    total = torch.zeros(dim, dim, dtype=torch.float64, device=op.device)
    count = 0
    with evaluation_mode(op.model), tf32_mode(op.allow_tf32, op.device), twice_differentiable():
        for inputs, targets in op.data:
            x, y = op.to_device(inputs, targets)
            weight = len(y) if op.reduction == "mean" else 1.0  # samples: the targets
            total += weight * batch_matrix(op, x, y).to(torch.float64)
            count += len(y)
    buffer = torch.cat([total.reshape(-1), torch.tensor([float(count)], device=op.device,
                                                        dtype=torch.float64)])
    all_reduce_sum(buffer)
    total = buffer[:-1].view(dim, dim)
    if op.reduction == "mean":
        total = total / buffer[-1]
    return total.cpu().numpy()


def _flat_functions(op: CurvatureOperator, x):
    """The network outputs as a function of the flat parameter vector (model dtype)."""
    params = op.space.parameters(op.model)
    selected = set(op.space.names)
    frozen = {n: p.detach() for n, p in op.model.named_parameters() if n not in selected}
    frozen.update(dict(op.model.named_buffers()))
    flat = op.space.join(params.values())

    def outputs(w):
        return call_model(op.model, (op.space.split(w), frozen), x)

    return flat, outputs


def _batch_hessian(op, x, y):
    flat, outputs = _flat_functions(op, x)
    return hessian(lambda w: op.loss_fn(outputs(w), y))(flat)


def _batch_ggn(op, x, y):
    flat, outputs = _flat_functions(op, x)
    z = outputs(flat).detach()
    J = jacrev(outputs)(flat).reshape(z.numel(), -1)
    H_loss = hessian(lambda out: op.loss_fn(out, y))(z).reshape(z.numel(), z.numel())
    return J.T @ H_loss @ J
