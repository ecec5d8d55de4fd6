"""Lanczos with full reorthogonalization and thick restart (Wu and Simon, 2000).

The process maintains a Krylov decomposition of the symmetric operator ``A`` (``n x n``)

    A Q_j = Q_j T_j + beta_j q_{j+1} e_j^T,      Q_j^T Q_j = I,   Q_j^T q_{j+1} = 0,

with ``T_j = Q_j^T A Q_j`` (``j x j``, float64). Started from ``q_1 = v0 / ||v0||`` it is the
classical Lanczos tridiagonalization: ``T_j`` has diagonal ``alphas`` and off-diagonal
``betas``. After a thick restart (keep ``k`` Ritz pairs ``(theta_i, y_i)`` and the residual
direction ``q_{j+1}``) ``T`` is an arrowhead matrix ``[[diag(theta), s], [s^T, ...]]``
followed by a tridiagonal tail, with ``s_i = beta_j * S[j, i]`` [Wu and Simon, SIAM J. Matrix
Anal. Appl. 22(2), 2000].

One step (one application of ``A``), in the notation above:

1. ``w = A q_j``                                             (the only expensive line)
2. ``h = Q_j^T w``;  ``alpha_j = h_j``;  ``w <- w - Q_j h``   (classical Gram-Schmidt)
3. ``h' = Q_j^T w``; ``w <- w - Q_j h'``                      (twice is enough: Giraud et
   al., Numer. Math. 101, 2005; keeps ``||Q^T Q - I||`` at the level of machine epsilon)
4. ``beta_j = ||w||``; if ``beta_j <= eps * ||T|| * max(100, sqrt(n))`` the Krylov space is
   invariant (breakdown): continue from a random vector orthogonal to ``Q_j`` with
   ``beta_j = 0``, which keeps the decomposition exact.
5. ``q_{j+1} = w / beta_j``

Full reorthogonalization against all of ``Q_j`` (rather than the three-term recurrence
alone) subtracts ``alpha_j q_j + beta_{j-1} q_{j-1}`` *and* every rounding-error component
along earlier vectors, which is what prevents the spurious copies ("ghosts") of converged
eigenvalues of plain Lanczos [Paige 1976; Parlett, *The Symmetric Eigenvalue Problem*, ch. 13].
``T`` is kept exactly structured (tridiagonal/arrowhead) from ``alpha``, ``beta`` and ``s``;
the reorthogonalization coefficients are rounding-level and are not added to it.

Two modes share the breakdown rule (:func:`breakdown_tolerance`) and the state protocol of a
checkpoint (``state_dict()`` -> ``(small, vectors)``, ``load_state_dict(small, vectors)``,
``bases()``):

* :class:`LanczosProcess`, one vector, with thick restart and locking (the eigensolver),
  and its block mode :class:`~lanczos_hessian.linalg.block_lanczos.BlockLanczosProcess`;
* :class:`~lanczos_hessian.linalg.lockstep.LockstepLanczos`, ``P`` independent recurrences
  (the probes of stochastic Lanczos quadrature) advanced by ONE block application of ``A``
  per step, each with the step above or, without reorthogonalization, the three-term
  recurrence.

All recurrence scalars and ``T`` are float64, whatever the precision of the operator.
"""

from __future__ import annotations

import math
import time

import numpy as np
import scipy.linalg
import torch

from .basis import TensorBasis, shard_basis
from .partition import Whole

EPS = float(np.finfo(np.float64).eps)


def breakdown_tolerance(anorm, dim: int):
    """``beta`` at or below which the Krylov space counts as invariant (step 4).

    ``eps * ||T|| * max(100, sqrt(n))``: the size of the rounding left in ``w`` after
    orthogonalizing against an invariant subspace, with ``||T||`` estimated by the largest
    ``|entry|`` seen (a scalar, or an array with one estimate per recurrence).
    """
    return EPS * np.maximum(anorm, EPS) * max(100.0, math.sqrt(dim))


class LanczosProcess:
    """A Krylov decomposition grown one operator application at a time.

    Parameters
    ----------
    matvec : callable
        ``matvec(V) -> A V`` on ``(n, b)`` float64 tensors (here ``b = 1``).
    v0 : torch.Tensor
        Start vector ``(n,)``; normalized here.
    capacity : int
        Maximum number of basis vectors held at once (``ncv``).
    generator : torch.Generator
        Source of the random vectors drawn after a breakdown.
    basis : object, optional
        A basis store (see :mod:`lanczos_hessian.linalg.basis`); default a :class:`TensorBasis`
        on ``v0``'s device.
    shard : Whole, optional
        When the vectors are split across processes (:mod:`~lanczos_hessian.linalg.partition`):
        ``v0``, the basis and every vector here are this process's rows, ``matvec`` works on
        row slices, and inner products are summed over processes.
    """

    def __init__(self, matvec, v0: torch.Tensor, capacity: int, generator: torch.Generator,
                 basis=None, shard=None):
        self.matvec = matvec
        self.shard = shard or Whole(v0.shape[0])
        self.dim = self.shard.n
        self.device = v0.device
        self.capacity = min(capacity, self.dim)
        self.generator = generator
        basis = basis or TensorBasis(v0.shape[0], self.capacity, device=self.device)
        self.basis = shard_basis(basis, self.shard)
        width = self.capacity + self.block_size  # room for the arrow of a restart
        self.T = np.zeros((width, width))
        norm = self.shard.norm(v0.to(torch.float64))
        if not np.isfinite(norm) or norm == 0:
            raise ValueError("the start vector v0 must be finite and nonzero")
        self.next_q = v0.to(torch.float64) / norm
        self.beta = 0.0  # coupling of the last basis vector to next_q
        self.exhausted = False  # the basis spans an invariant subspace that cannot grow
        self.num_steps = 0  # applications of A to one vector each
        self.num_breakdowns = 0
        self.alphas: list = []  # the first cycle's tridiagonal (before any restart)
        self.betas: list = []
        self.restarted = False
        self.block_start = 0  # first column of the Krylov block grown since the last breakdown
        # Couplings dropped by locking: A Q = Q T + beta q e_j^T + sum_l u_l D[l]^T with unit
        # u_l, so every Ritz residual gains at most sum_l |D[l] . S[:, i]|.
        self.dropped = np.zeros((0, 0))
        self._arrow_pending = False  # T[:k, k] already holds the arrow s after a restart
        self.timings = {"operator": 0.0, "orthogonalization": 0.0}

    block_size = 1

    @property
    def size(self) -> int:
        """Number of basis vectors ``j``."""
        return self.basis.size

    @property
    def num_vectors(self) -> int:
        """Vectors the operator was applied to (one per step here)."""
        return self.num_steps * self.block_size

    @property
    def full(self) -> bool:
        """Whether the basis has no room for the next step (time for a thick restart)."""
        return self.size + self.block_size > self.capacity

    def anorm(self) -> float:
        """A lower estimate of ``||A||_2``: the largest ``|entry|`` of ``T`` and ``beta``."""
        j = self.size
        return max(float(np.abs(self.T[:j, :j]).max(initial=0.0)), abs(self.beta))

    def step(self) -> None:
        """One Lanczos step (one application of ``A``); numbered as in the module docstring."""
        j = self.size
        q = self.next_q
        self.basis.append(q)
        if j > 0 and not self._arrow_pending:
            self.T[j - 1, j] = self.T[j, j - 1] = self.beta
        self._arrow_pending = False
        t0 = time.perf_counter()
        w = self.matvec(q.reshape(-1, 1)).reshape(-1).to(self.device, torch.float64)  # 1.
        t1 = time.perf_counter()
        self.num_steps += 1
        alpha = self.shard.dot(q, w)
        w, _ = self.basis.orthogonalize(w)  # 2.-3.
        self.T[j, j] = alpha
        beta = self.shard.norm(w)  # 4.
        if not self.restarted:
            self.alphas.append(alpha)
            self.betas.append(beta)
        if beta <= self._breakdown_tol():
            w, beta = self._restart_after_breakdown()
            self.block_start = self.size
            if not self.restarted:
                self.betas[-1] = 0.0
        self.beta = beta
        self.next_q = w / beta if beta > 0 else w  # 5.
        self.timings["operator"] += t1 - t0
        self.timings["orthogonalization"] += time.perf_counter() - t1

    def _breakdown_tol(self) -> float:
        return breakdown_tolerance(self.anorm(), self.dim)

    def _restart_after_breakdown(self) -> tuple:
        """An invariant subspace was found: continue with a random orthogonal direction.

        Returns ``(q, 0.0)`` with ``q`` a unit vector orthogonal to the basis, or marks the
        process exhausted when the basis already spans the whole space.
        """
        self.num_breakdowns += 1
        if self.size >= self.dim:
            self.exhausted = True
            return torch.zeros_like(self.next_q), 0.0
        # drawn whole on every rank from the same generator state, then this rank's rows
        r = torch.randn(self.dim, generator=self.generator, dtype=torch.float64)
        r = self.shard.local(r).to(self.device)
        r, _ = self.basis.orthogonalize(r)
        norm = self.shard.norm(r)
        if norm <= 1e-8:  # nothing left outside span(Q)
            self.exhausted = True
            return torch.zeros_like(r), 0.0
        return r / norm, 0.0  # beta = 0 decouples the new block

    def _carry_dropped(self, S_keep: np.ndarray) -> np.ndarray:
        """Earlier dropped couplings expressed in the new basis ``Q S_keep``."""
        j = S_keep.shape[0]
        if not self.dropped.size:
            return np.zeros((0, S_keep.shape[1]))
        return self.dropped[:, :j] @ S_keep

    def ritz(self) -> tuple:
        """Eigen-decomposition of ``T_j``: Ritz values ``theta`` (ascending) and ``S``."""
        j = self.size
        # LAPACK's MRRR driver, single call: numpy's eigh wakes the BLAS thread pool at
        # every step, which cost half the run time beside a cheap operator
        theta, S = scipy.linalg.eigh(self.T[:j, :j], driver="evr")
        return theta, S

    def residual_bounds(self, S: np.ndarray) -> np.ndarray:
        """``||A y_i - theta_i y_i||`` for the Ritz vectors ``y_i = Q S[:, i]``, bounded for free.

        ``|beta_j S[j, i]|`` (exact in exact arithmetic), plus ``sum_l |D[l] . S[:, i]|`` for
        the couplings dropped when pairs were locked. No application of ``A``.
        """
        bounds = np.abs(self.beta * S[-1, :])
        if self.dropped.size:
            bounds = bounds + np.abs(self.dropped[:, : S.shape[0]] @ S).sum(axis=0)
        return bounds

    def current_block_ritz(self) -> tuple:
        """Ritz values and residual bounds of the block grown since the last breakdown.

        After a breakdown the basis splits into invariant blocks and a block growing from a
        random vector in their complement; that block's extreme Ritz values are what is
        known about the rest of the spectrum. Empty arrays when the block is empty.
        """
        a, j = self.block_start, self.size
        theta, S = np.linalg.eigh(self.T[a:j, a:j])
        return theta, np.abs(self.beta * S[-1, :]) if j > a else np.zeros(0)

    def ritz_vectors(self, S: np.ndarray) -> torch.Tensor:
        """``Q_j S`` (``n x r`` float64)."""
        return self.basis.combine(S)

    def thick_restart(self, theta: np.ndarray, S: np.ndarray, keep: np.ndarray,
                      locked: np.ndarray) -> None:
        """Keep the Ritz pairs ``keep`` (indices into ``theta``) and the residual direction.

        The new decomposition is ``A Y = Y diag(theta_K) + q_{j+1} s^T`` with
        ``s = beta_j S[j, K]``; ``T`` becomes the arrowhead ``[[diag(theta_K), s], [s^T, .]]``
        whose last row is filled by the next step. Entries of ``s`` of pairs in ``locked``
        (converged, ``|s_i| <= tol``) are set to zero: their pairs decouple and stay fixed
        (locking), at the price of a perturbation no larger than the tolerance they met.
        """
        keep = np.asarray(keep)
        s = self.beta * S[-1, keep]
        is_locked = np.isin(keep, locked)
        dropped = self._carry_dropped(S[:, keep])
        if is_locked.any():
            dropped = np.vstack([dropped, np.where(is_locked, s, 0.0)[None, :]])
        s[is_locked] = 0.0
        self.basis.restart(S[:, keep])
        k = len(keep)
        self.dropped = np.zeros((len(dropped), self.capacity + self.block_size))
        self.dropped[:, :k] = dropped
        self.T[:] = 0.0
        self.T[np.arange(k), np.arange(k)] = theta[keep]
        self.T[:k, k] = self.T[k, :k] = s
        self._arrow_pending = True
        self.restarted = True
        self.block_start = 0

    # ---- checkpointing -----------------------------------------------------------------
    def bases(self) -> list:
        """The basis stores whose layout a checkpoint records (their vectors are stored apart)."""
        return [self.basis]

    def state_dict(self) -> tuple:
        """``(small, vectors)``: everything needed to continue exactly, but the basis itself.

        ``small`` holds numpy arrays and scalars (``T``, the coefficients, counters, the
        random generator's state); ``vectors`` the list ``[next Lanczos vector]``.
        """
        small = {
            "T": self.T.copy(), "beta": self.beta, "exhausted": self.exhausted,
            "num_steps": self.num_steps, "num_breakdowns": self.num_breakdowns,
            "alphas": np.asarray(self.alphas, dtype=np.float64),
            "betas": np.asarray(self.betas, dtype=np.float64),
            "restarted": self.restarted, "block_start": self.block_start,
            "dropped": self.dropped.copy(), "arrow_pending": self._arrow_pending,
            "generator": self.generator.get_state().numpy().copy(),
            "timing_operator": self.timings["operator"],
            "timing_orthogonalization": self.timings["orthogonalization"],
        }
        return small, [self.next_q]

    def load_state_dict(self, small: dict, vectors) -> None:
        """Restore what :meth:`state_dict` returned, ``vectors`` as ``(1, n)`` rows (the basis
        is restored by its store)."""
        self.T[:] = small["T"]
        self.beta = float(small["beta"])
        self.exhausted = bool(small["exhausted"])
        self.num_steps = int(small["num_steps"])
        self.num_breakdowns = int(small["num_breakdowns"])
        self.alphas = [float(a) for a in small["alphas"]]
        self.betas = [float(b) for b in small["betas"]]
        self.restarted = bool(small["restarted"])
        self.block_start = int(small["block_start"])
        self.dropped = np.asarray(small["dropped"], dtype=np.float64).reshape(
            -1, self.capacity + self.block_size) if np.size(small["dropped"]) else np.zeros((0, 0))
        self._arrow_pending = bool(small["arrow_pending"])
        self.generator.set_state(torch.from_numpy(np.asarray(small["generator"], dtype=np.uint8)))
        self.timings = {"operator": float(small["timing_operator"]),
                        "orthogonalization": float(small["timing_orthogonalization"])}
        self.next_q = torch.as_tensor(vectors[0]).to(self.device, torch.float64)
