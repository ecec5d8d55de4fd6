"""Storage of a Lanczos basis ``Q = [q_1 ... q_j]`` with the three operations Lanczos needs.

Lanczos with full reorthogonalization touches the basis in exactly three ways:

* ``project(w)``  -> ``Q^T w``          (the Gram-Schmidt coefficients, float64),
* ``subtract(w, h)``: ``w <- w - Q h``  (removing them),
* ``combine(S)``  -> ``Q S``            (Ritz vectors, and the thick restart).

Any store that implements them (device memory, host memory, an HDF5 dataset streamed in
blocks) gives the same numbers. :class:`TensorBasis` keeps ``Q`` as one preallocated tensor,
on the operator's device (default) or in host memory.
"""

from __future__ import annotations

import numpy as np
import torch


class TensorBasis:
    """Orthonormal columns held in a preallocated ``(dim, capacity)`` tensor.

    Parameters
    ----------
    dim : int
        Length of each vector.
    capacity : int
        Maximum number of columns.
    device : torch.device
        Where ``Q`` lives; vectors passed in may live elsewhere (they are moved).
    dtype : torch.dtype
        Storage precision of ``Q`` (float64 by default; the coefficients are float64).
    """

    def __init__(self, dim: int, capacity: int, device=None, dtype=torch.float64):
        self.dim, self.capacity = dim, capacity
        self.Q = torch.empty(dim, capacity, dtype=dtype, device=device)
        self.size = 0

    def append(self, q: torch.Tensor) -> None:
        """Store ``q`` as column ``size``."""
        if self.size == self.capacity:
            raise RuntimeError(f"basis is full ({self.capacity} columns)")
        self.Q[:, self.size] = q.to(self.Q.device, self.Q.dtype)
        self.size += 1

    def column(self, j: int) -> torch.Tensor:
        return self.Q[:, j]

    def project(self, w: torch.Tensor) -> torch.Tensor:
        """``Q^T w`` as a float64 vector of length ``size`` (on ``w``'s device)."""
        Q = self.Q[:, : self.size]
        return (Q.T @ w.to(Q.device, Q.dtype)).to(w.device, torch.float64)

    def subtract(self, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``w - Q h`` (a new tensor on ``w``'s device and dtype)."""
        Q = self.Q[:, : self.size]
        return w - (Q @ h.to(Q.device, Q.dtype)).to(w.device, w.dtype)

    def combine(self, S: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``Q S`` for ``S`` of shape ``(size, r)``: a ``(dim, r)`` float64 tensor."""
        Q = self.Q[:, : self.size]
        S = torch.as_tensor(S, dtype=Q.dtype, device=Q.device)
        return (Q @ S).to(torch.float64)

    def reset(self, columns: torch.Tensor) -> None:
        """Replace the basis by the orthonormal ``columns`` ``(dim, r)`` (thick restart)."""
        r = columns.shape[1]
        self.Q[:, :r] = columns.to(self.Q.device, self.Q.dtype)
        self.size = r
