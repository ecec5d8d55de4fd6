"""Lockstep Lanczos: ``P`` independent recurrences (the probes of stochastic Lanczos
quadrature) advanced by ONE block application of the operator per step, each with the step
of :mod:`~lanczos_hessian.linalg.lanczos` or, without reorthogonalization, the three-term
recurrence; with the state protocol of a checkpoint."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from .basis import TensorBasis, shard_basis
from .lanczos import breakdown_tolerance
from .partition import Whole

__all__ = ["LockstepLanczos"]


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
