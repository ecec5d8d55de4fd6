"""The eigensolver's state: thick-restart Lanczos advanced one operator application per
:meth:`EigshState.step`, with its restart and lock policy, its convergence test and its step
count in one object that can be saved and restored exactly.

The driver (:func:`~lanczos_hessian.linalg.eigsh.lanczos_eigsh`) is then a loop::

    state = EigshState(...)
    while not state.converged:
        state.step()
    state.result()

and a checkpoint saves ``state.state_dict()`` after each step (the keys of the files written
before the states existed: ``num_restarts``, ``num_passes``, ``num_vectors``, ``elapsed``
beside the Lanczos process's own, so that those files resume).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from ..errors import ResumeError
from .eigsh_result import EigshResult
from .block_lanczos import BlockLanczosProcess
from .lanczos import LanczosProcess
from .partition import ShardedMatvec, whole_or
from .ritz import (complement_explored, converged_mask, gap_bounds, keep_indices,
                   lock_margin, ritz_state, thresholds)

__all__ = ["EigshState", "STATE_FORMAT", "check_state_format", "start_vector",
           "assemble_result"]

#: Version of the solver states' saved form (``state_format`` in the saved arrays; files
#: written before it have none and read as version 1, the same keys).
STATE_FORMAT = 1


def check_state_format(small: dict, what: str) -> None:
    """Refuse a saved state of a later format than this version reads, naming both."""
    version = int(np.asarray(small.get("state_format", 1)))
    if version > STATE_FORMAT:
        raise ResumeError(f"the saved {what} state has format version {version}; this version "
                          f"of lanczos_hessian reads up to version {STATE_FORMAT}: resume it "
                          "with the version that wrote it")


class EigshState:
    """Thick-restart Lanczos for ``k`` wanted eigenpairs, one application per :meth:`step`.

    ``matvec`` is a :class:`~lanczos_hessian.linalg.linop.BlockMatvec` (its counters count the run's
    applications); the other arguments are :func:`~lanczos_hessian.linalg.eigsh.lanczos_eigsh`'s,
    checked there, with ``budget`` the vectors the recurrence may use and ``bases``/``shard`` the
    :class:`~lanczos_hessian.linalg.hooks.Hooks`' (where the basis lives, which rows).

    >>> import numpy as np
    >>> from lanczos_hessian.linalg.linop import as_block_matvec
    >>> state = EigshState(as_block_matvec(np.diag(np.arange(1.0, 51.0))), k=2, which="LA",
    ...                    tol=1e-10, ncv=20, budget=500, rng=0)
    >>> while not state.converged:
    ...     state.step()
    >>> np.round(state.result().eigenvalues, 8).tolist()
    [49.0, 50.0]
    """

    def __init__(self, matvec, *, k, which="LA", tol=1e-6, criterion="norm", k_bottom=None,
                 ncv, budget, block_size=1, v0=None, rng=None, bases=None, shard=None):
        self.k, self.which, self.tol, self.criterion = k, which, tol, criterion
        self.k_bottom, self.budget = k_bottom, budget
        n = matvec.dim
        generator, v0 = start_vector(rng, v0, matvec, block_size)
        self.shard = whole_or(shard, n)
        v0 = self.shard.local(v0).to(matvec.device)  # this rank's rows only on the device
        if self.shard.is_split:
            matvec = ShardedMatvec(matvec, self.shard)
        self.matvec = matvec
        basis = bases(0, self.shard.local_dim, ncv) if bases is not None else None
        kind = BlockLanczosProcess if block_size > 1 else LanczosProcess
        self.process = kind(matvec, v0, ncv, generator, basis=basis, shard=self.shard)
        self.num_restarts, self.finished = 0, False
        self.elapsed_before, self.t_ritz = 0.0, 0.0
        self.start = time.perf_counter()
        self.theta = self.bounds = None  # the last step's Ritz values and bounds
        self.num_converged = 0

    # ---- the loop ------------------------------------------------------------------------
    @property
    def converged(self) -> bool:
        """Whether the run is over: the wanted pairs converged, the Krylov space is
        exhausted, or the budget is spent (:meth:`result` says which pairs converged)."""
        return self.finished

    def step(self) -> None:
        """One application of the operator; then the Ritz pairs, the convergence test and,
        when the basis is full, a thick restart keeping the wanted pairs and locking the
        converged ones."""
        process, k, which = self.process, self.k, self.which
        process.step()
        t0 = time.perf_counter()
        theta, S, bounds, want, threshold, _ = ritz_state(process, k, which, self.k_bottom,
                                                          self.tol, self.criterion)
        done = bounds[want] <= threshold[want]
        self.t_ritz += time.perf_counter() - t0
        self.theta, self.bounds, self.wanted_theta, self.done = theta, bounds, theta[want], done
        converged = (len(want) == k and done.all()
                     and complement_explored(process, which, threshold.min()))
        self.finished = converged or process.exhausted or process.num_vectors >= self.budget
        if not self.finished and process.full:
            room = process.capacity - (process.block_size - 1)  # the next block must fit
            keep = keep_indices(theta, k, which, room, self.k_bottom, nconv=int(done.sum()))
            locked = np.intersect1d(keep, np.flatnonzero(
                bounds <= threshold * lock_margin(process.block_size, k)))
            process.thick_restart(theta, S, keep, locked)
            self.num_restarts += 1

    def result(self, return_eigenvectors: bool = True,
               true_residuals: bool = False) -> EigshResult:
        """The wanted pairs now, with their bounds (and measured residuals: one more
        application)."""
        process = self.process
        theta, S, bounds, want, _, anorm = ritz_state(process, self.k, self.which,
                                                      self.k_bottom, self.tol, self.criterion)
        result = assemble_result(
            process, theta, S, bounds, want, self.tol, anorm, self.criterion, self.which,
            self.matvec, return_eigenvectors, true_residuals, self.num_restarts,
            {"ritz": self.t_ritz, "total": self.elapsed})
        if self.which == "BE":
            result = replace(result, k_bottom=self.k // 2 if self.k_bottom is None
                             else int(self.k_bottom))
        return result

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    # ---- saving and restoring -------------------------------------------------------------
    def bases(self) -> list:
        """The basis stores whose layout a checkpoint records."""
        return self.process.bases()

    def state_dict(self) -> tuple:
        """``(small, vectors)``: the Lanczos process's state with the driver's counters."""
        small, vectors = self.process.state_dict()
        small.update({"num_restarts": self.num_restarts,
                      "num_passes": self.matvec.num_passes,
                      "num_vectors": self.matvec.num_vectors,
                      "elapsed": self.elapsed, "state_format": STATE_FORMAT})
        return small, vectors

    def load_state_dict(self, small: dict, vectors) -> None:
        """Restore :meth:`state_dict`'s output (``finished``, when given, is the commit
        record's flag)."""
        check_state_format(small, "eigensolver")
        self.process.load_state_dict(small, vectors)
        self.num_restarts = int(small["num_restarts"])
        self.finished = bool(small.get("finished", False))
        self.matvec.num_passes = int(small["num_passes"])
        self.matvec.num_vectors = int(small["num_vectors"])
        self.elapsed_before, self.start = float(small["elapsed"]), time.perf_counter()


def start_vector(rng, v0, matvec, block_size=1):
    """The generator of the run (seeded from ``rng``) and the float64 start vector ``(n,)``
    (single-vector mode) or start block ``(n, block_size)``, whole and on the CPU (every
    rank draws the same numbers; a rank with sharded vectors then moves its rows alone to
    the operator's device)."""
    n = matvec.dim
    if rng is None:  # every rank must draw the same vectors: the operator's common entropy
        rng = matvec.draw_seed()
    seed_rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    generator = torch.Generator().manual_seed(int(seed_rng.integers(2**62)))
    if v0 is None:
        v0 = torch.randn(n, generator=generator, dtype=torch.float64)
    v0 = torch.as_tensor(np.asarray(v0) if not isinstance(v0, torch.Tensor) else v0)
    if v0.shape != (n,):
        raise ValueError(f"v0 has shape {tuple(v0.shape)}, expected ({n},)")
    v0 = v0.to(torch.float64)
    if block_size > 1:
        rest = torch.randn(n, block_size - 1, generator=generator, dtype=torch.float64)
        v0 = torch.cat([v0[:, None], rest], dim=1)
    return generator, v0.cpu()


def assemble_result(process, theta, S, bounds, want, tol, anorm, criterion, which, matvec,
                    return_eigenvectors, true_residuals, num_restarts, timings):
    """The :class:`EigshResult` of the wanted pairs ``want`` of the Ritz pairs ``(theta, S)``."""
    shard = process.shard
    vectors = process.ritz_vectors(S[:, want]) if (return_eigenvectors or true_residuals) else None
    residuals = None
    if true_residuals:
        AY = matvec(vectors.to(matvec.device)).to(vectors.device)
        R = AY - vectors * torch.as_tensor(theta[want], device=vectors.device)
        residuals = shard.sum((R * R).sum(dim=0)).sqrt().cpu().numpy()
    if return_eigenvectors:
        vectors = shard.gather(vectors)
    timings = {**process.timings, **timings}
    # the free bound knows nothing of rounding in the operator (float32 products): where the
    # true residual was measured, the error bound uses whichever residual is larger
    measured = bounds.copy()
    if residuals is not None:
        measured[want] = np.maximum(bounds[want], residuals)
    return EigshResult(
        eigenvalues=theta[want].copy(),
        eigenvectors=vectors.cpu().numpy() if return_eigenvectors else None,
        residual_bounds=bounds[want].copy(),
        error_bounds=gap_bounds(theta, want, measured),
        residuals=residuals,
        converged=converged_mask(bounds[want], residuals,
                             thresholds(theta, tol, anorm, criterion)[want]),
        num_matvecs=matvec.num_vectors,
        num_passes=matvec.num_passes,
        num_restarts=num_restarts,
        alphas=np.array(process.alphas),
        betas=np.array(process.betas[:-1]) if process.betas else np.array([]),
        timings=timings,
        which=which,
        tol=tol,
        anorm=anorm,
        orthogonality=process.basis.orthogonality(),
        block_size=process.block_size,
    )
