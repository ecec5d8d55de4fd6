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

* :class:`LanczosProcess`, one vector, with thick restart and locking (the eigensolver);
* :class:`LockstepLanczos`, ``P`` independent recurrences (the probes of stochastic Lanczos
  quadrature) advanced by ONE block application of ``A`` per step, each with the step above
  or, without reorthogonalization, the three-term recurrence.

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



class LockstepLanczos:
    """``P`` independent Lanczos recurrences advanced by one block product per step.

    Parameters
    ----------
    matvec : callable
        ``matvec(V) -> A V`` on ``(n, b)`` float64 tensors (one pass for the whole block).
    U : torch.Tensor
        ``(n, P)`` unit start vectors (this process's rows when split).
    num_steps : int
        Most steps any recurrence makes (the capacity of each basis).
    reorthogonalize : bool
        Full reorthogonalization against each recurrence's own basis (step 2-3 of the module
        docstring), or the three-term recurrence with three vectors per recurrence.
    project : callable
        ``project(W)`` applied to every product (the deflation projector; identity if none);
        ``project.rank`` is the dimension it removes.
    basis_device, basis_factory :
        Where the bases live: ``basis_factory(p, n, capacity)`` makes recurrence ``p``'s store,
        else a :class:`TensorBasis` on ``basis_device`` (default ``U``'s device).
    shard : Whole, optional
        The rows of every vector this process holds.
    """

    def __init__(self, matvec, U: torch.Tensor, num_steps: int, reorthogonalize: bool,
                 project, basis_device=None, basis_factory=None, shard=None):
        rows, P = U.shape
        self.shard = shard or Whole(rows)
        n = self.shard.n
        self.matvec, self.project = matvec, project
        self.dim = n
        self.reorthogonalize = reorthogonalize
        self.q = U.clone()                       # current Lanczos vectors, (n, P)
        self.q_prev = torch.zeros_like(U)        # previous ones (three-term recurrence)
        self.beta_prev = np.zeros(P)
        self.alphas = np.full((P, num_steps), np.nan)
        self.betas = np.full((P, num_steps), np.nan)
        self.num_nodes = np.zeros(P, dtype=np.int64)
        self.active = np.ones(P, dtype=bool)
        self.anorm = np.zeros(P)                 # max |entry| of T so far, per probe
        # With full reorthogonalization the space has dimension n - k: a probe can make at
        # most that many steps before its residual must vanish.
        self.max_length = n - project.rank if reorthogonalize else math.inf
        capacity = int(min(num_steps, self.max_length))
        basis_device = U.device if basis_device is None else torch.device(basis_device)
        make = basis_factory or (lambda p, dim, cap: TensorBasis(dim, cap, device=basis_device))
        self.probe_bases = ([shard_basis(make(p, rows, capacity), self.shard)
                             for p in range(P)] if reorthogonalize else [])
        self.timings = {"operator": 0.0, "orthogonalization": 0.0}

    def step(self) -> None:
        """One Lanczos step of every active probe, with one block application of ``A``."""
        idx = np.flatnonzero(self.active)
        j = int(self.num_nodes[idx[0]])  # all active probes are at the same step
        Q = self.q[:, idx]
        t0 = time.perf_counter()
        W = self.matvec(Q.to(self.matvec.device)).to(Q.device, torch.float64)
        t1 = time.perf_counter()
        W = self.project(W)
        if self.reorthogonalize:
            alpha, W = self._reorthogonalized(idx, Q, W)
        else:
            alpha, W = self._three_term(idx, Q, W)
        beta = self.shard.sum((W * W).sum(dim=0)).sqrt().cpu().numpy()
        self.timings["operator"] += t1 - t0
        self.timings["orthogonalization"] += time.perf_counter() - t1
        self.anorm[idx] = np.maximum.reduce([self.anorm[idx], np.abs(alpha),
                                             self.beta_prev[idx]])
        tol = breakdown_tolerance(self.anorm[idx], self.dim)
        broke = (beta <= tol) | (j + 1 >= self.max_length)
        beta = np.where(broke, 0.0, beta)
        self.alphas[idx, j] = alpha
        self.betas[idx, j] = beta
        self.num_nodes[idx] = j + 1
        keep = ~broke
        kept = idx[keep]
        scale = torch.as_tensor(beta[keep], dtype=torch.float64, device=W.device)
        self.q_prev[:, kept] = Q[:, keep]
        self.q[:, kept] = W[:, keep] / scale
        self.beta_prev[kept] = beta[keep]
        self.active[idx[broke]] = False

    def _reorthogonalized(self, idx, Q, W):
        """``alpha = q^T A q``; then CGS twice against each probe's own basis (with ``q``)."""
        alpha = self.shard.sum((Q * W).sum(dim=0)).cpu().numpy()
        columns = []
        for c, p in enumerate(idx):
            self.probe_bases[p].append(Q[:, c])
            w, _ = self.probe_bases[p].orthogonalize(W[:, c])
            columns.append(w)
        return alpha, torch.stack(columns, dim=1)

    def _three_term(self, idx, Q, W):
        """Paige's ordering: ``w = A q - beta_prev q_prev``; ``alpha = q^T w``; ``w -= alpha q``."""
        beta_prev = torch.as_tensor(self.beta_prev[idx], dtype=torch.float64, device=W.device)
        W = W - self.q_prev[:, idx] * beta_prev
        alpha_t = self.shard.sum((Q * W).sum(dim=0)).to(W.device)
        W = W - Q * alpha_t
        return alpha_t.cpu().numpy(), W

    def snapshot(self, step: int) -> tuple:
        return self.alphas[:, :step].copy(), self.betas[:, :step].copy()

    def bases(self) -> list:
        """The probes' basis stores (none without reorthogonalization)."""
        return self.probe_bases

    def state_dict(self) -> tuple:
        """``(small, vectors)`` to continue exactly, ``vectors`` the ``P`` current then the
        ``P`` previous Lanczos vectors; the bases are restored by their stores."""
        small = {"beta_prev": self.beta_prev.copy(), "alphas": self.alphas.copy(),
                 "betas": self.betas.copy(), "num_nodes": self.num_nodes.copy(),
                 "active": self.active.copy(), "anorm": self.anorm.copy(),
                 "timing_operator": self.timings["operator"],
                 "timing_orthogonalization": self.timings["orthogonalization"]}
        return small, list(self.q.T) + list(self.q_prev.T)

    def load_state_dict(self, small: dict, vectors) -> None:
        """Restore what :meth:`state_dict` returned, ``vectors`` as ``(2 P, n)`` rows."""
        vectors = torch.as_tensor(vectors)
        P = vectors.shape[0] // 2
        q, q_prev = vectors[:P].T, vectors[P:].T
        self.beta_prev = np.array(small["beta_prev"], dtype=np.float64)
        self.alphas = np.array(small["alphas"], dtype=np.float64)
        self.betas = np.array(small["betas"], dtype=np.float64)
        self.num_nodes = np.array(small["num_nodes"], dtype=np.int64)
        self.active = np.array(small["active"], dtype=bool)
        self.anorm = np.array(small["anorm"], dtype=np.float64)
        self.timings = {"operator": float(small["timing_operator"]),
                        "orthogonalization": float(small["timing_orthogonalization"])}
        self.q = q.to(self.q.device, torch.float64).clone()
        self.q_prev = q_prev.to(self.q.device, torch.float64).clone()
