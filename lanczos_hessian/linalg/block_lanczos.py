"""Block Lanczos: the Krylov decomposition of :mod:`~lanczos_hessian.linalg.lanczos` grown
``b`` vectors per application of the operator (one pass over the data serves ``b``
vectors), with the same thick restart, locking and state protocol."""

from __future__ import annotations

import time

import numpy as np
import torch

from .lanczos import LanczosProcess

__all__ = ["BlockLanczosProcess"]


class BlockLanczosProcess(LanczosProcess):
    """The block mode: a Krylov decomposition grown ``b`` vectors per application of ``A``.

    With ``X_j`` the newest block of ``b`` orthonormal vectors and ``Q`` all of them,

        A Q = Q T + X_{j+1} B_j E^T,      Q^T X_{j+1} = 0,

    where ``E`` selects the last ``b`` columns and ``B_j`` (``b x b``, upper triangular) comes
    from the QR factorization of the orthogonalized product. One step is one pass over the
    data for the whole block (Golub and Underwood 1977; Saad, *Numerical Methods for Large
    Eigenvalue Problems*, 2011, Sec. 6.7):

    1. ``W = A X_j``                                          (ONE block application)
    2. ``D = X_j^T W`` (symmetrized); CGS twice of ``W`` against all of ``Q``
    3. ``W = X_{j+1} B_j`` by Gram-Schmidt twice within the block; a column whose norm falls
       below the breakdown tolerance (:func:`breakdown_tolerance`) is rank deficiency: it is
       replaced by a random vector orthogonal to ``Q`` and the block, with a zero row in
       ``B_j`` (the decomposition stays exact; if every column breaks down, the basis spans an
       invariant subspace and a new decoupled block starts, as in the single-vector mode).

    ``T`` is block tridiagonal (``D`` on the diagonal, ``B`` beside it), an arrowhead after a
    thick restart. The residual of a Ritz pair ``(theta_i, Q s_i)`` is ``X_{j+1} B_j E^T s_i``,
    so its bound is ``||B_j S[-b:, i]||``, free as in the single-vector mode; locking drops the
    coupling of converged pairs into ``b`` rows of dropped couplings, carried in the bounds.
    """

    def __init__(self, matvec, V0: torch.Tensor, capacity: int, generator: torch.Generator,
                 basis=None, shard=None):
        rows, b = V0.shape
        self.block_size = b
        super().__init__(matvec, V0[:, 0], capacity, generator, basis=basis, shard=shard)
        self.B = np.zeros((b, b))  # coupling of the last block to the next one
        X, R, _ = self._block_qr(V0.to(self.device, torch.float64), orthogonalize=False)
        if not np.all(np.diag(R) > 0):
            raise ValueError("the start block must have linearly independent columns")
        self.next_q = X
        self.alphas, self.betas = [], []

    @property
    def beta(self) -> float:
        """``||B||_2`` of the coupling to the next block (what the step records hold)."""
        return float(np.linalg.norm(self.B, 2)) if self.B.size else 0.0

    @beta.setter
    def beta(self, value) -> None:  # the single-vector constructor sets a scalar: ignored
        pass

    def anorm(self) -> float:
        j = self.size
        return max(float(np.abs(self.T[:j, :j]).max(initial=0.0)),
                   float(np.abs(self.B).max(initial=0.0)))

    def step(self) -> None:
        """One block step: one application of ``A`` to ``b`` vectors (class docstring)."""
        j, b = self.size, self.block_size
        X = self.next_q
        for c in range(b):
            self.basis.append(X[:, c])
        if j > 0 and not self._arrow_pending:
            self.T[j:j + b, j - b:j] = self.B
            self.T[j - b:j, j:j + b] = self.B.T
        self._arrow_pending = False
        t0 = time.perf_counter()
        W = self.matvec(X).to(self.device, torch.float64)  # 1.
        t1 = time.perf_counter()
        self.num_steps += 1
        D = self.shard.sum(X.T @ W).cpu().numpy()
        W, _ = self.basis.orthogonalize(W)  # 2.
        self.T[j:j + b, j:j + b] = (D + D.T) / 2
        X, R, broke = self._block_qr(W)  # 3.
        if broke.all():  # an invariant subspace: the next block starts decoupled
            R[:] = 0.0
            self.block_start = self.size
        self.num_breakdowns += int(broke.any())
        self.B, self.next_q = R, X
        self.timings["operator"] += t1 - t0
        self.timings["orthogonalization"] += time.perf_counter() - t1

    def _block_qr(self, W: torch.Tensor, orthogonalize: bool = True) -> tuple:
        """``W = X R`` with ``X`` orthonormal (and orthogonal to the basis), ``R`` upper
        triangular: Gram-Schmidt twice column by column. Columns below the breakdown
        tolerance are replaced by random unit vectors orthogonal to the basis and to ``X``,
        with a zero row of ``R``. Returns ``(X, R, broken columns)``."""
        b = W.shape[1]
        # a fixed (row-major) layout, whatever W's: a resumed run must multiply with the
        # same memory layout, hence the same rounding, as the uninterrupted one
        X = torch.zeros(W.shape, dtype=W.dtype, device=W.device)
        R = np.zeros((b, b))
        broke = np.zeros(b, dtype=bool)
        tol = self._breakdown_tol()
        for c in range(b):
            w = W[:, c]
            for _ in range(2):
                h = self.shard.sum(X[:, :c].T @ w)
                w = w - X[:, :c] @ h.to(w.device)
                R[:c, c] += h.cpu().numpy()
            norm = self.shard.norm(w)
            if norm <= tol:
                broke[c] = True
                w = self._random_orthogonal(X[:, :c], orthogonalize)
                norm = self.shard.norm(w)
                if norm <= 1e-8:  # nothing left outside span(Q, X)
                    self.exhausted = True
                    return X, R, broke
            else:
                R[c, c] = norm
            X[:, c] = w / norm
        return X, R, broke

    def _random_orthogonal(self, Xc: torch.Tensor, orthogonalize: bool) -> torch.Tensor:
        """A random vector (drawn whole on every rank, then this rank's rows) orthogonalized
        against the basis and the columns ``Xc``, twice."""
        r = torch.randn(self.dim, generator=self.generator, dtype=torch.float64)
        r = self.shard.local(r).to(self.device)
        for _ in range(2):
            if orthogonalize and self.basis.size:
                r, _ = self.basis.orthogonalize(r)
            r = r - Xc @ self.shard.sum(Xc.T @ r).to(r.device)
        return r

    def residual_bounds(self, S: np.ndarray) -> np.ndarray:
        """``||B_j S[-b:, i]||`` plus the dropped couplings of locked pairs (no application).

        Each locking dropped ``X C`` with ``X`` an orthonormal block: its ``b`` rows of
        couplings add their 2-norm ``||C s_i||``, not the sum of their magnitudes.
        """
        b = self.block_size
        bounds = np.linalg.norm(self.B @ S[-b:, :], axis=0)
        if self.dropped.size:
            rows = (self.dropped[:, : S.shape[0]] @ S).reshape(-1, b, S.shape[1])
            bounds = bounds + np.linalg.norm(rows, axis=1).sum(axis=0)
        return bounds

    def current_block_ritz(self) -> tuple:
        a, j, b = self.block_start, self.size, self.block_size
        theta, S = np.linalg.eigh(self.T[a:j, a:j])
        if j <= a:
            return theta, np.zeros(0)
        return theta, np.linalg.norm(self.B @ S[-b:, :], axis=0)

    def thick_restart(self, theta, S, keep, locked) -> None:
        """Keep the Ritz pairs ``keep`` and the next block: ``A Y = Y diag(theta_K) +
        X_{j+1} C`` with ``C = B_j S[-b:, K]``, so ``T`` becomes the arrowhead
        ``[[diag(theta_K), C^T], [C, .]]``; the columns of ``C`` of locked pairs are dropped
        into ``b`` rows of dropped couplings (locking, as in the single-vector mode)."""
        keep = np.asarray(keep)
        b = self.block_size
        C = self.B @ S[-b:, keep]
        is_locked = np.isin(keep, locked)
        dropped = self._carry_dropped(S[:, keep])
        if is_locked.any():
            dropped = np.vstack([dropped, np.where(is_locked[None, :], C, 0.0)])
        C[:, is_locked] = 0.0
        self.basis.restart(S[:, keep])
        k = len(keep)
        self.dropped = np.zeros((len(dropped), self.capacity + b))
        self.dropped[:, :k] = dropped
        self.T[:] = 0.0
        self.T[np.arange(k), np.arange(k)] = theta[keep]
        self.T[:k, k:k + b] = C.T
        self.T[k:k + b, :k] = C
        self._arrow_pending = True
        self.restarted = True
        self.block_start = 0

    def state_dict(self) -> tuple:
        small, _ = super().state_dict()
        small["B"] = self.B.copy()
        return small, list(self.next_q.T)

    def load_state_dict(self, small: dict, vectors) -> None:
        super().load_state_dict(small, vectors)
        self.B = np.asarray(small["B"], dtype=np.float64).reshape(self.block_size,
                                                                   self.block_size)
        self.next_q = torch.as_tensor(np.asarray(vectors)).T.to(self.device, torch.float64)
        self.next_q = self.next_q.contiguous()
