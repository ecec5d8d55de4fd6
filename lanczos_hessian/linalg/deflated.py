"""Eigenpairs first, then SLQ on the rest: the deflated spectral density, planned once.

A deflated SLQ run is ONE eigensolver run for the ``k_top`` largest and ``k_bottom`` smallest
eigenpairs (:func:`deflation_plan`), from the first of the two seeds :func:`split_seed`
spawns from the run's seed, then SLQ (fixed probes, or adaptive with ``target_error``) on the
complement of their eigenvectors from the second seed. :class:`DeflatedPlan` holds that plan;
:func:`deflated_slq` (in memory), :func:`lanczos_hessian.run.slq` (with a file and resume)
and the comparison scripts all run it, so the same seed gives the same numbers everywhere.

>>> import numpy as np
>>> A = np.diag([1.0] * 38 + [5.0, 7.0])  # a flat bulk and two outliers: tr A = 50
>>> result = deflated_slq(A, 2, num_probes=4, num_steps=5, rng=0)
>>> result.outliers.round(8).tolist(), round(result.trace().value, 8)
([5.0, 7.0], 50.0)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from .. import validate
from .eigsh import lanczos_eigsh
from .hooks import NO_HOOKS, Hooks
from .linop import BlockMatvec, as_block_matvec
from .probes import resolve_seed, split_seed
from .slq_drivers import adaptive_slq, check_slq_arguments, check_target, slq
from .slq_result import SLQResult

__all__ = ["DeflatedPlan", "deflated_slq", "deflation_plan", "with_deflation_cost",
           "eigsh_operand"]


def deflation_plan(k_top: int, k_bottom: int) -> tuple:
    """``(k, which, k_bottom)`` of the ONE eigensolver run that computes the ``k_top`` largest
    and ``k_bottom`` smallest eigenpairs: ``LA``, ``SA``, or ``BE`` with its bottom count."""
    for name, value in (("k_top", k_top), ("k_bottom", k_bottom)):
        if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
                or value < 0):
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    k = int(k_top + k_bottom)
    which = "BE" if k_top and k_bottom else "LA" if k_top else "SA"
    return k, which, (int(k_bottom) if which == "BE" else None)


@dataclass(frozen=True)
class DeflatedPlan:
    """The eigensolver run and the SLQ run of a deflated SLQ, with their seeds.

    ``k``/``which``/``k_bottom`` are :func:`deflation_plan`'s (``k = 0``: no deflation);
    ``eigs_seed``/``probe_seed`` the two halves of :func:`split_seed`.
    """

    k: int
    which: str
    k_bottom: int | None
    eigs_seed: int
    probe_seed: int

    @classmethod
    def make(cls, k_top: int, k_bottom: int, seed) -> "DeflatedPlan":
        k, which, k_b = deflation_plan(k_top, k_bottom)
        return cls(k, which, k_b, *split_seed(seed))

    def eigenpairs(self, op, *, tol=1e-6, ncv=None, max_matvecs=None, progress=False,
                   dim=None, callback=None, hooks: Hooks = NO_HOOKS):
        """The deflation's eigenpairs (None when ``k = 0``), eigenvectors included."""
        if not self.k:
            return None
        return lanczos_eigsh(op, self.k, self.which, tol, k_bottom=self.k_bottom, ncv=ncv,
                             max_matvecs=max_matvecs, rng=self.eigs_seed, progress=progress,
                             dim=dim, callback=callback, hooks=hooks)

    def quadrature(self, op, eigenpairs, *, num_probes=10, num_steps=80, probe="rademacher",
                   reorthogonalize=True, target_error=None, confidence=0.95,
                   max_probes=200, progress=False, dim=None, basis_device=None,
                   callback=None, hooks: Hooks = NO_HOOKS) -> SLQResult:
        """SLQ on the complement of ``eigenpairs``: ``num_probes`` probes, or rounds of
        them until ``target_error`` at ``confidence`` (:func:`adaptive_slq`)."""
        common = dict(num_steps=num_steps, probe=probe, rng=self.probe_seed,
                      reorthogonalize=reorthogonalize, deflate=eigenpairs, progress=progress,
                      dim=dim, basis_device=basis_device, callback=callback, hooks=hooks)
        if target_error is None:
            return slq(op, num_probes, **common)
        return adaptive_slq(op, target_error, confidence=confidence,
                            probes_per_round=num_probes, max_probes=max_probes, **common)


def deflated_slq(op, k_top: int, k_bottom: int = 0, num_probes: int = 10,
                 num_steps: int = 80, *, tol: float = 1e-6, probe: str = "rademacher",
                 rng=None, reorthogonalize: bool = True, ncv: int | None = None,
                 max_matvecs: int | None = None, callback=None, progress: bool = False,
                 dim: int | None = None, basis_device=None,
                 target_error: float | None = None, confidence: float = 0.95) -> SLQResult:
    """The ``k_top`` largest and ``k_bottom`` smallest eigenpairs by
    :func:`~lanczos_hessian.linalg.eigsh.lanczos_eigsh`, then
    :func:`~lanczos_hessian.linalg.slq.slq` deflated by them (the plan of :class:`DeflatedPlan`).

    One eigensolver run (:func:`deflation_plan`) from the first seed of :func:`split_seed`,
    the probes from the second: the same numbers as ``lanczos-hessian slq --deflate-top
    k_top --deflate-bottom k_bottom --seed rng`` and :func:`lanczos_hessian.run.slq`.
    ``rng`` is an int seed, a numpy Generator (one seed is drawn from it) or None (fresh
    entropy). ``tol`` (default ``1e-6``, the eigensolver's) bounds the residuals
    ``||A y - lambda y|| <= tol ||A||``; an unconverged pair still deflates a valid subspace
    but its coupling to the bulk (its residual) is left out (a
    :class:`~lanczos_hessian.errors.NumericalWarning` says so). ``num_passes`` and
    ``num_matvecs`` of the result count ALL applications (eigensolver and SLQ);
    ``deflation_passes``/``deflation_matvecs`` the eigensolver's part. The other arguments
    are :func:`~lanczos_hessian.linalg.slq.slq`'s and
    :func:`~lanczos_hessian.linalg.eigsh.lanczos_eigsh`'s. With ``target_error``, the probes
    are added in rounds of ``num_probes`` until the trace is known to within
    ``target_error`` at ``confidence`` (:func:`~lanczos_hessian.linalg.slq.adaptive_slq`);
    ``callback`` is called after every SLQ step either way.
    """
    check_slq_arguments(num_probes, num_steps, probe)
    validate.optional_integer("ncv", ncv, low=1)
    validate.optional_integer("max_matvecs", max_matvecs, low=1)
    if target_error is not None:
        check_target(target_error, confidence)
    k, _, _ = deflation_plan(k_top, k_bottom)
    if k < 1:
        raise ValueError("deflated_slq needs k_top + k_bottom >= 1 (else call slq)")
    matvec = op if isinstance(op, BlockMatvec) else as_block_matvec(op, dim)
    plan = DeflatedPlan.make(k_top, k_bottom, resolve_seed(rng, matvec))
    t0 = time.perf_counter()
    eig_op, eig_dim = eigsh_operand(op, dim)
    eigs = plan.eigenpairs(eig_op, tol=tol, ncv=ncv, max_matvecs=max_matvecs,
                           progress=progress, dim=eig_dim)
    t_eig = time.perf_counter() - t0
    result = plan.quadrature(op, eigs, num_probes=num_probes, num_steps=num_steps,
                             probe=probe, reorthogonalize=reorthogonalize,
                             target_error=target_error, confidence=confidence,
                             progress=progress, dim=dim, basis_device=basis_device,
                             callback=callback)
    return with_deflation_cost(result, eigs.num_passes, eigs.num_matvecs, t_eig)


def with_deflation_cost(result: SLQResult, passes: int, matvecs: int,
                        seconds: float | None = None) -> SLQResult:
    """``result`` with the eigensolver's applications counted in ``num_passes`` and
    ``num_matvecs`` (and recorded apart as ``deflation_passes``/``deflation_matvecs``)."""
    timings = result.timings
    if seconds is not None:
        timings = {**timings, "eigsh": seconds, "total": timings["total"] + seconds}
    return replace(result, num_passes=result.num_passes + passes,
                   num_matvecs=result.num_matvecs + matvecs,
                   deflation_passes=passes, deflation_matvecs=matvecs, timings=timings)


def eigsh_operand(op, dim):
    """What :func:`lanczos_eigsh` is given: ``op`` itself (its native, e.g. GPU, path), or
    for a :class:`BlockMatvec` a ``LinearOperator`` that applies a whole block through it in
    one call (so that the caller's counters see every application)."""
    if not isinstance(op, BlockMatvec):
        return op, dim
    device = op.device

    def matmat(X):
        X = np.asarray(X, dtype=np.float64)
        V = torch.from_numpy(np.ascontiguousarray(X.reshape(X.shape[0], -1))).to(device)
        return op(V).cpu().numpy().reshape(X.shape)

    return LinearOperator((op.dim, op.dim), matvec=matmat, matmat=matmat,
                          dtype=np.float64), None
