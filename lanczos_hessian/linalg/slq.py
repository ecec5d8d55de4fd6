"""Stochastic Lanczos quadrature (SLQ): the whole spectral measure of a symmetric operator.

For the ``n x n`` symmetric ``A = sum_j lambda_j y_j y_j^T`` and a unit probe ``u``, the
measure ``mu_u = sum_j (u^T y_j)^2 delta(lambda_j)`` has Gauss quadrature rule given by
``m`` Lanczos steps from ``q_1 = u``: with ``T_m = S diag(theta) S^T`` the ``m x m``
tridiagonal (diagonal ``alphas``, off-diagonal ``betas``), the nodes are ``theta_i`` and the
weights ``w_i = S[0, i]^2`` (Golub and Welsch, Math. Comp. 23, 1969), and

    u^T f(A) u  ~  sum_i w_i f(theta_i)  =  e_1^T f(T_m) e_1,

exactly for polynomials ``f`` of degree ``<= 2m - 1`` (Golub and Meurant, *Matrices, Moments
and Quadrature with Applications*, 2010, ch. 6).

Probes and the estimator
------------------------
A probe ``z`` is Rademacher (entries +-1) or Gaussian (entries N(0, 1)), normalized to
``u = z / ||z||``. Both give ``E[u u^T] = I / n`` (Rademacher: ``||z||^2 = n`` exactly;
Gaussian: ``u`` is uniform on the sphere), hence the standard unbiased estimator of Ubaru,
Chen and Saad (SIAM J. Matrix Anal. Appl. 38(4), 2017):

    tr f(A)  ~  (n / P) sum_p sum_i w[p, i] f(theta[p, i]),

and the probe-averaged quadrature measure estimates ``mu = (1/n) sum_j delta(lambda_j)``.
For Gaussian probes the factor is ``n`` (not ``||z||^2``, Hutchinson's unnormalized form):
both are unbiased and the normalized form has the smaller variance.

Lockstep probes
---------------
All ``P`` probes run their own Lanczos recurrence, and advance together: each step applies
the operator ONCE to the ``(n, b)`` block of the current vectors of the ``b <= P`` probes
still running. An operator that makes one pass over a data set per block (a
:class:`~lanczos_hessian.curvature.operators.CurvatureOperator`) thus makes exactly ``num_steps``
passes, whatever ``P``. Each probe's step is, with full reorthogonalization, the step of
:class:`~lanczos_hessian.linalg.lanczos.LanczosProcess` (``alpha = q^T A q``, then classical
Gram-Schmidt twice against the probe's own basis), so lockstep and one-probe-at-a-time
runs give the same numbers.

Breakdown: when ``beta_j <= eps * ||T|| * max(100, sqrt(n))`` (the rule of
:mod:`~lanczos_hessian.linalg.lanczos`) the Krylov space of the probe is invariant and its
``j``-node rule already integrates ``mu_u`` exactly. The probe then stops: it is dropped
from later block products (it costs nothing more), its last ``beta`` is recorded as 0, and
its rows of ``nodes``/``weights`` are padded with NaN nodes of weight 0.

Without reorthogonalization
---------------------------
``reorthogonalize=False`` runs the plain three-term recurrence (Paige's ordering:
``w = A q_j - beta_{j-1} q_{j-1}``; ``alpha_j = q_j^T w``; ``w -= alpha_j q_j``), keeping
three vectors per probe instead of ``m``. In floating point the Lanczos vectors then lose
orthogonality as soon as a Ritz value converges (Paige, J. Inst. Math. Appl. 18, 1976) and
"ghost" copies of converged eigenvalues appear; yet the computed ``T_m`` is the exact
Lanczos matrix of a nearby larger problem whose eigenvalues lie in tiny intervals around
those of ``A`` (Greenbaum, Linear Algebra Appl. 113, 1989, "Behavior of slightly perturbed
Lanczos and conjugate-gradient recurrences"), so the ghosts split the weight of their
eigenvalue rather than adding to it, and the Gauss rule still integrates smooth ``f``
(polynomials, wide kernels, the CDF at a resolution coarser than the node spacing) almost
as accurately as in exact arithmetic (Knizhnerman, Comput. Math. Math. Phys. 36(3), 1996;
Chen, Trogdon and Ubaru, ICML 2021, "Analysis of stochastic Lanczos quadrature for
spectrum approximation", Sec. 5). Memory falls from ``P * m * n`` to ``3 * P * n`` numbers.

Deflation
---------
Given ``k`` eigenpairs ``(lambda_j, y_j)`` (e.g. the outliers from
:func:`~lanczos_hessian.linalg.eigsh.lanczos_eigsh`), SLQ runs on ``P A P`` restricted to the
complement of ``Y = [y_1 .. y_k]``, ``P = I - Y Y^T`` (``Y`` re-orthonormalized by QR so
``P`` is an exact orthogonal projector): probes are projected (``u = P z / ||P z||``) and
every product is projected again. The spectral measure of ``A`` is then

    mu = sum_j (1/n) delta(lambda_j) + ((n - k)/n) * mu_bulk,

with ``mu_bulk`` estimated by the Gauss rules (``bulk_mass = (n - k)/n``). With Gaussian
probes ``P z / ||P z||`` is uniform on the unit sphere of the complement, so the
estimator stays exactly unbiased; with Rademacher probes it is a ratio estimator with a
relative bias of order ``k/n``.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.linalg
import torch
from scipy.sparse.linalg import LinearOperator

from .. import validate
from . import density
from .eigsh import EigshResult, lanczos_eigsh
from ..progress import Progress
from .hooks import NO_HOOKS, Hooks
from .lanczos import EPS, LockstepLanczos
from .linop import BlockMatvec, as_block_matvec
from .partition import ShardedMatvec, Whole, whole_or

logger = logging.getLogger(__name__)

PROBES = ("rademacher", "gaussian")

#: Tolerance on ``max |Y^T Y - I|`` for deflation vectors (they are re-orthonormalized
#: afterwards; this only rejects vectors that are not eigenvectors of one symmetric matrix).
ORTHONORMALITY_TOL = 1e-3


@dataclass(frozen=True)
class SLQResult(density.QuadratureStatistics):
    """Gauss quadrature rules of ``P`` probes (see the module docstring).

    Attributes
    ----------
    nodes : ndarray (P, m) float64
        Eigenvalues of each probe's tridiagonal ``T``, ascending; ``m`` is the largest
        number of steps any probe made, shorter probes padded with NaN.
    weights : ndarray (P, m) float64
        Squared first components of ``T``'s eigenvectors (each row sums to 1); 0 on padding.
        With deflation these are the weights of the bulk measure (see ``bulk_mass``).
    alphas : ndarray (P, m) float64
        Diagonal of each ``T`` (NaN padding).
    betas : ndarray (P, m) float64
        ``betas[p, :L-1]`` is the off-diagonal of probe ``p``'s ``T`` (``L = num_nodes[p]``)
        and ``betas[p, L-1]`` the norm of its last residual (0 after a breakdown).
    num_nodes : ndarray (P,) int
        Steps made by each probe (``num_steps`` unless it broke down).
    dim : int
        ``n``.
    num_probes, num_steps : int
        As requested.
    num_passes : int
        Operator applications (a block counts once); ``num_steps`` unless every probe broke
        down earlier. :func:`deflated_slq` adds the eigensolver's.
    num_matvecs : int
        Operator applications to single vectors (a block of ``b`` counts ``b``).
    outliers : ndarray (k,) float64
        Deflated eigenvalues (empty without deflation), each of mass ``1/n``.
    outlier_residuals : ndarray (k,) float64
        Their residual norms (bounds) as supplied; NaN when unknown.
    bulk_mass : float
        ``(n - k)/n``, the mass of the quadrature part of the measure.
    probe : str
        ``"rademacher"`` or ``"gaussian"`` (``"given"`` for explicit probes).
    seed : int or None
        ``slq(..., rng=seed)`` redraws the same probes (None for explicit probes).
    reorthogonalized : bool
    deflation_passes, deflation_matvecs : int
        The part of ``num_passes``/``num_matvecs`` spent computing the outliers.
    timings : dict
        Seconds in the operator, in orthogonalization/projection, in the quadrature, total.
    orthogonality : float
        ``max_p max |Q_p^T Q_p - I|`` over the probes' stored bases, measured after the last
        step (NaN without reorthogonalization: no basis is stored).
    duplicate_nodes : int
        Pairs of nodes of one probe closer than ``sqrt(eps) * ||T||``: the signature of ghost
        copies of converged eigenvalues when orthogonality is lost (exact Gauss nodes are
        distinct). Expected 0 with full reorthogonalization; without it, a few ghosts split
        their eigenvalue's weight and the smooth statistics stay valid (module docstring).
    target_error, confidence : float
        What :func:`adaptive_slq` was asked for: the half-width ``target_error`` of a
        two-sided ``confidence`` interval of its statistic (both NaN for a fixed number of
        probes).

    The statistics (``density``, ``trace``, ``moments``, ``fraction_below``, ...) are those of
    :class:`~lanczos_hessian.linalg.density.QuadratureStatistics`: ``moments(q)`` are the
    normalized moments ``(1/n) tr(A^q)`` of the spectral density (``moments(q,
    normalized=False)`` the traces ``tr(A^q)``), and ``to_dataframe(per="node" | "probe")``
    tabulates the rules (pandas optional). Ordering: nodes ascending within each probe, as
    every eigenvalue array of the package.
    """

    nodes: np.ndarray
    weights: np.ndarray
    alphas: np.ndarray
    betas: np.ndarray
    num_nodes: np.ndarray
    dim: int
    num_probes: int
    num_steps: int
    num_passes: int
    num_matvecs: int
    outliers: np.ndarray
    outlier_residuals: np.ndarray
    bulk_mass: float
    probe: str
    seed: int | None
    reorthogonalized: bool = True
    deflation_passes: int = 0
    deflation_matvecs: int = 0
    timings: dict = field(default_factory=dict)
    orthogonality: float = float("nan")
    duplicate_nodes: int = 0
    target_error: float = float("nan")
    confidence: float = float("nan")

    def __repr__(self) -> str:
        """One line whatever the number of probes and steps."""
        trace = self.trace()
        return (f"SLQResult({self.num_probes} probes x {self.num_steps} steps, n={self.dim}, "
                f"{len(self.outliers)} deflated, trace {trace.value:.6g} +- "
                f"{trace.stderr:.2g}, {self.num_passes} passes)")

    def summary(self) -> str:
        """Trace, the second moment and the signed masses, each with its standard error."""
        t, (_, _, m2) = self.trace(), self.moments(2, normalized=False)
        lines = [repr(self), f"trace            {t.value:.6g} +- {t.stderr:.2g}",
                 f"tr(A^2)          {m2.value:.6g} +- {m2.stderr:.2g}",
                 f"fraction < 0     {self.fraction_below(0.0).value:.4f} +- "
                 f"{self.fraction_below(0.0).stderr:.4f}",
                 f"orthogonality    {self.orthogonality:.1e} (max |Q^T Q - I| over probes)"]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return "<pre>" + self.summary() + "</pre>"


@dataclass(frozen=True)
class SLQStep:
    """What a ``callback`` receives after each lockstep step (copies; safe to keep).

    ``alpha``/``beta`` hold this step's coefficients per probe (NaN for probes that had
    already stopped); ``alphas``/``betas`` all coefficients so far, ``(P, step)``, laid out as
    in :class:`SLQResult`.
    """

    step: int
    alpha: np.ndarray
    beta: np.ndarray
    alphas: np.ndarray
    betas: np.ndarray
    active: np.ndarray
    num_nodes: np.ndarray
    num_passes: int
    num_matvecs: int
    elapsed_s: float

    def quadrature(self) -> tuple:
        """``(nodes, weights)`` of the rules so far, ``(P, step)`` with NaN/0 padding."""
        return quadrature_rules(self.alphas, self.betas, self.num_nodes)


# ------------------------------------------------------------------ quadrature


def gauss_quadrature(alphas, betas) -> tuple:
    """Golub-Welsch: nodes ``theta`` (ascending) and weights ``S[0, :]^2`` of the symmetric
    tridiagonal with diagonal ``alphas`` (``L``) and off-diagonal ``betas`` (``L - 1``)."""
    alphas = np.asarray(alphas, dtype=np.float64)
    betas = np.asarray(betas, dtype=np.float64)
    if alphas.size == 1:
        return alphas.copy(), np.ones(1)
    theta, S = scipy.linalg.eigh_tridiagonal(alphas, betas)
    return theta, S[0, :] ** 2


def quadrature_rules(alphas, betas, num_nodes) -> tuple:
    """:func:`gauss_quadrature` of every probe: ``(P, m)`` nodes and weights, NaN/0 padded."""
    P, m = alphas.shape
    nodes = np.full((P, m), np.nan)
    weights = np.zeros((P, m))
    for p in range(P):
        L = int(num_nodes[p])
        if L > 0:
            nodes[p, :L], weights[p, :L] = gauss_quadrature(alphas[p, :L], betas[p, :L - 1])
    return nodes, weights


def count_duplicate_nodes(nodes, alphas, betas) -> int:
    """Pairs of adjacent nodes of one probe closer than ``sqrt(eps) * ||T_p||`` (``||T_p||``
    estimated by the largest ``|alpha|`` and ``|beta|`` of that probe): ghosts."""
    count = 0
    for p in range(nodes.shape[0]):
        x = nodes[p][np.isfinite(nodes[p])]
        if x.size < 2:
            continue
        scale = max(np.nanmax(np.abs(alphas[p])), np.nanmax(np.abs(betas[p])), EPS)
        count += int((np.diff(np.sort(x)) <= np.sqrt(EPS) * scale).sum())
    return count


# ------------------------------------------------------------------ probes


def draw_probes(dim: int, num_probes: int, kind: str = "rademacher", rng=None) -> np.ndarray:
    """``(dim, num_probes)`` float64 raw probes (not normalized): +-1 or N(0, 1) entries.

    ``rng`` is an int seed or a numpy ``Generator``; :func:`slq` with ``rng=seed`` uses
    ``draw_probes(n, P, kind, seed)``.
    """
    if kind not in PROBES:
        raise ValueError(f"unknown probe={kind!r}; choose one of {PROBES}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if kind == "rademacher":
        return 2.0 * gen.integers(0, 2, size=(dim, num_probes)).astype(np.float64) - 1.0
    return gen.standard_normal((dim, num_probes))


def _resolve_seed(rng, matvec) -> int:
    """An integer seed: ``rng`` itself, drawn from a Generator, or for None fresh entropy
    (63 bits, an int64 attribute; the operator's, so that every rank draws the same)."""
    if rng is None:
        return matvec.draw_seed()
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(2**63))
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0:
        return int(rng)
    raise TypeError(f"rng must be None, a non-negative int or a numpy Generator, got {rng!r}")


# ------------------------------------------------------------------ deflation


class _Projector:
    """``P = I - Q Q^T`` for an orthonormal basis ``Q`` of ``span(Y)`` (identity if ``k = 0``).

    With a split :class:`~lanczos_hessian.linalg.partition.Whole`, ``Y`` is whole and ``Q``
    keeps this process's rows; ``Q^T W`` is summed over processes.
    """

    def __init__(self, Y: torch.Tensor | None, shard=None):
        self.shard = shard or Whole(0 if Y is None else Y.shape[0])
        Q = None if Y is None or Y.shape[1] == 0 else torch.linalg.qr(Y)[0]
        self.Q = None if Q is None else self.shard.local(Q).contiguous()

    @property
    def rank(self) -> int:
        return 0 if self.Q is None else self.Q.shape[1]

    def __call__(self, W: torch.Tensor) -> torch.Tensor:
        """``P W``, by classical Gram-Schmidt twice (``W`` is ``(n, b)``, or this rank's rows)."""
        if self.Q is None:
            return W
        for _ in range(2):
            W = W - self.Q @ self.shard.sum(self.Q.T @ W)
        return W


def _parse_deflate(deflate, dim: int, device) -> tuple:
    """``(values (k,), residuals (k,), Y (n, k) tensor or None)`` from the ``deflate`` argument."""
    if deflate is None:
        return np.zeros(0), np.zeros(0), None
    if isinstance(deflate, EigshResult):
        values, vectors = deflate.eigenvalues, deflate.eigenvectors
        residuals = deflate.residual_bounds
        if vectors is None:
            raise ValueError("deflate: the EigshResult holds no eigenvectors "
                             "(use return_eigenvectors=True)")
    elif isinstance(deflate, (tuple, list)) and len(deflate) in (2, 3):
        values, vectors = deflate[0], deflate[1]
        residuals = deflate[2] if len(deflate) == 3 else None
    else:
        raise TypeError("deflate must be (eigenvalues, eigenvectors), (eigenvalues, "
                        "eigenvectors, residuals) or an EigshResult")
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    k = values.size
    Y = torch.as_tensor(np.asarray(vectors) if not isinstance(vectors, torch.Tensor) else vectors)
    Y = Y.to(device, torch.float64)
    if Y.ndim != 2 or Y.shape != (dim, k):
        raise ValueError(f"deflate: eigenvectors have shape {tuple(Y.shape)}, expected "
                         f"({dim}, {k}) for {k} eigenvalues")
    if not k < dim:
        raise ValueError(f"deflate: {k} eigenpairs leave no complement in dimension {dim}")
    if not (np.all(np.isfinite(values)) and bool(torch.isfinite(Y).all())):
        raise ValueError("deflate: eigenvalues and eigenvectors must be finite")
    gram_error = float((Y.T @ Y - torch.eye(k, dtype=torch.float64, device=device))
                       .abs().max()) if k else 0.0
    if gram_error > ORTHONORMALITY_TOL:
        raise ValueError(f"deflate: eigenvectors are not orthonormal (max |Y^T Y - I| = "
                         f"{gram_error:.2e} > {ORTHONORMALITY_TOL:g})")
    residuals = (np.full(k, np.nan) if residuals is None
                 else np.asarray(residuals, dtype=np.float64).reshape(-1))
    if residuals.size != k:
        raise ValueError(f"deflate: {residuals.size} residuals for {k} eigenpairs")
    return values, residuals, (Y if k else None)


# ------------------------------------------------------------------ drivers


def check_slq_arguments(num_probes, num_steps, probe) -> None:
    """The bad-input checks of :func:`slq`, before any pass over the data (or any file)."""
    validate.integer("num_probes", num_probes, low=1)
    validate.integer("num_steps", num_steps, low=1)
    validate.choice("probe", probe, PROBES)


_validate = check_slq_arguments  # the name used before


def _start_vectors(probes, num_probes, probe, rng, matvec, project, shard) -> tuple:
    """Unit columns ``P z / ||P z||`` (this rank's rows of them when sharded) and the seed
    (None for explicit probes)."""
    n, device = matvec.dim, matvec.device
    if probes is None:
        seed = _resolve_seed(rng, matvec)
        Z = torch.from_numpy(draw_probes(n, num_probes, probe, seed))
    else:
        seed = None
        Z = torch.as_tensor(np.asarray(probes) if not isinstance(probes, torch.Tensor)
                            else probes).to(torch.float64)
        if Z.ndim == 1:
            Z = Z[:, None]
        if Z.shape != (n, num_probes):
            raise ValueError(f"probes have shape {tuple(Z.shape)}, expected ({n}, "
                             f"{num_probes}) (num_probes={num_probes})")
    Z = project(shard.local(Z).to(device))
    norms = shard.sum((Z * Z).sum(dim=0)).sqrt().to(device)
    if not bool(torch.isfinite(norms).all()) or bool((norms <= EPS * math.sqrt(n)).any()):
        raise ValueError("a probe is zero (or not finite) after projection onto the "
                         "complement of the deflated eigenvectors")
    return Z / norms, seed


def slq(op, num_probes: int = 10, num_steps: int = 80, *, probe: str = "rademacher",
        rng=None, reorthogonalize: bool = True, deflate=None, callback=None,
        progress: bool = False, dim: int | None = None, probes=None,
        basis_device=None, hooks: Hooks = NO_HOOKS) -> SLQResult:
    """Stochastic Lanczos quadrature with ``num_probes`` probes of ``num_steps`` steps each.

    Parameters
    ----------
    op : LinearOperator, CurvatureOperator, array, tensor, callable or BlockMatvec
        The symmetric ``n x n`` operator (see :mod:`lanczos_hessian.linalg.linop`); a
        :class:`~lanczos_hessian.linalg.linop.BlockMatvec` is used as is (its counters keep
        running, so a caller can count applications).
    num_probes : int
        ``P >= 1``; default 10. Every estimate reports its standard error over probes, so
        the choice can be checked afterwards; one Rademacher probe estimates ``tr(A)`` with
        variance ``2 (||A||_F^2 - sum_i A_ii^2)`` (Hutchinson, 1990), a relative error of
        about ``sqrt(2 / (n P))`` for a flat spectrum.
    num_steps : int
        Lanczos steps ``m >= 1`` per probe (= block applications); default 80. Measured in
        ``tests/test_slq.py`` on a uniform spectrum: ``W1 ~ 0.26 * range / m`` between the
        quadrature measure and the true one until probe noise dominates, so 80 steps resolve
        the measure to ~0.3% of its range.
    probe : {"rademacher", "gaussian"}
        Distribution of the raw probe entries (see the module docstring).
    rng : int, numpy Generator or None
        Seed of the probes (recorded as ``result.seed``).
    reorthogonalize : bool
        Full reorthogonalization (default) or the three-term recurrence (module docstring).
    deflate : (eigenvalues (k,), eigenvectors (n, k)[, residuals (k,)]) or EigshResult
        Run on the complement of these eigenvectors and add them as exact outliers.
    callback : callable, optional
        ``callback(step, state)`` after every step, ``state`` an :class:`SLQStep`.
    progress : bool
        Show progress over the lockstep steps (a bar on a terminal, status lines with the
        time left in a log file; :class:`~lanczos_hessian.progress.Progress`).
    dim : int, optional
        Size of a bare matvec callable.
    probes : array (n, num_probes), optional
        Explicit raw probes instead of random ones (projected and normalized here).
    basis_device : torch.device or str, optional
        Where the ``P`` stored bases (``P * num_steps * n`` float64 numbers) live; default
        the operator's device, ``"cpu"`` to keep them in host memory (same numbers).
    hooks : Hooks, optional
        Where the probes' bases live (``hooks.bases(p, rows, capacity)``, e.g. on disk; it
        overrides ``basis_device``), the checkpoint committed after every step (its
        ``restore`` returns the committed state with its ``step``), and the rows held when
        the vectors are split across ranks: each rank then stores ``1 / W`` of the ``P``
        bases, inner products are summed over ranks, and every rank ends with the same result
        (:mod:`lanczos_hessian.linalg.hooks`).

    Returns
    -------
    SLQResult
    """
    check_slq_arguments(num_probes, num_steps, probe)
    start = time.perf_counter()
    matvec = op if isinstance(op, BlockMatvec) else as_block_matvec(op, dim)
    n = matvec.dim
    device = matvec.device
    outliers, outlier_residuals, Y = _parse_deflate(deflate, n, device)
    shard, checkpoint = whole_or(hooks.shard, n), hooks.checkpoint
    project = _Projector(Y, shard)
    U, seed = _start_vectors(probes, num_probes, probe, rng, matvec, project, shard)
    if shard.is_split:
        matvec = ShardedMatvec(matvec, shard)
    passes0, vectors0 = matvec.num_passes, matvec.num_vectors
    lanczos = LockstepLanczos(matvec, U, num_steps, reorthogonalize, project, basis_device,
                              hooks.bases, shard)
    steps = 0
    if checkpoint is not None:
        resumed = checkpoint.restore(lanczos)
        steps = 0 if resumed is None else int(resumed["step"])
        passes0 -= steps  # the restored steps count as this run's passes
        vectors0 -= int(lanczos.num_nodes.sum())
    bar = Progress("SLQ", "step", total=num_steps, initial=steps, enabled=bool(progress))
    while steps < num_steps and lanczos.active.any():
        was_active = lanczos.active.copy()
        lanczos.step()
        steps += 1
        bar.update(1)
        if callback is not None:
            callback(steps, _step_state(lanczos, steps, was_active, matvec, passes0,
                                        vectors0, time.perf_counter() - start))
        if checkpoint is not None:
            checkpoint.commit(lanczos, {"step": steps},
                              not (steps < num_steps and lanczos.active.any()))
    bar.close()
    t0 = time.perf_counter()
    m = int(lanczos.num_nodes.max())
    alphas, betas = lanczos.alphas[:, :m].copy(), lanczos.betas[:, :m].copy()
    nodes, weights = quadrature_rules(alphas, betas, lanczos.num_nodes)
    t_quad = time.perf_counter() - t0
    result = SLQResult(
        nodes=nodes, weights=weights, alphas=alphas, betas=betas,
        num_nodes=lanczos.num_nodes.copy(), dim=n, num_probes=num_probes,
        num_steps=num_steps, num_passes=matvec.num_passes - passes0,
        num_matvecs=matvec.num_vectors - vectors0, outliers=outliers,
        outlier_residuals=outlier_residuals, bulk_mass=(n - outliers.size) / n,
        probe=probe if probes is None else "given", seed=seed,
        reorthogonalized=reorthogonalize,
        timings={**lanczos.timings, "quadrature": t_quad,
                 "total": time.perf_counter() - start},
        orthogonality=max((b.orthogonality() for b in lanczos.bases()), default=float("nan")),
        duplicate_nodes=count_duplicate_nodes(nodes, alphas, betas),
    )
    logger.info("SLQ: %d probes x %d steps on n=%d (%d deflated): %d passes, %d vectors, "
                "%.3g s", num_probes, m, n, outliers.size, result.num_passes,
                result.num_matvecs, result.timings["total"])
    return result


def _step_state(lanczos, step, was_active, matvec, passes0, vectors0, elapsed) -> SLQStep:
    alpha = np.where(was_active, lanczos.alphas[:, step - 1], np.nan)
    beta = np.where(was_active, lanczos.betas[:, step - 1], np.nan)
    alphas, betas = lanczos.snapshot(step)
    return SLQStep(step=step, alpha=alpha, beta=beta, alphas=alphas, betas=betas,
                   active=lanczos.active.copy(), num_nodes=lanczos.num_nodes.copy(),
                   num_passes=matvec.num_passes - passes0,
                   num_matvecs=matvec.num_vectors - vectors0, elapsed_s=elapsed)


def split_seed(seed) -> tuple:
    """``(eigensolver seed, probe seed)``: two independent integer seeds spawned from ``seed``
    (``numpy.random.SeedSequence(seed).spawn(2)``), so that a deflated run draws its probes
    independently of its eigensolver's start vector, and the same probes whether it ran
    whole or resumed. Every deflated SLQ of the package (Python, command line, demo) splits
    its seed here."""
    return tuple(int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(2))


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


def deflated_slq(op, k_top: int, k_bottom: int = 0, num_probes: int = 10,
                 num_steps: int = 80, *, tol: float = 1e-6, probe: str = "rademacher",
                 rng=None, reorthogonalize: bool = True, ncv: int | None = None,
                 max_matvecs: int | None = None, callback=None, progress: bool = False,
                 dim: int | None = None, basis_device=None,
                 target_error: float | None = None, confidence: float = 0.95) -> SLQResult:
    """The ``k_top`` largest and ``k_bottom`` smallest eigenpairs by
    :func:`~lanczos_hessian.linalg.eigsh.lanczos_eigsh`, then :func:`slq` deflated by them.

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
    are :func:`slq`'s and :func:`~lanczos_hessian.linalg.eigsh.lanczos_eigsh`'s. With
    ``target_error``, the probes are added in rounds of ``num_probes`` until the trace is
    known to within ``target_error`` at ``confidence`` (:func:`adaptive_slq`).
    """
    check_slq_arguments(num_probes, num_steps, probe)
    validate.optional_integer("ncv", ncv, low=1)
    validate.optional_integer("max_matvecs", max_matvecs, low=1)
    if target_error is not None:
        _check_target(target_error, confidence)
    k, which, k_b = deflation_plan(k_top, k_bottom)
    if k < 1:
        raise ValueError("deflated_slq needs k_top + k_bottom >= 1 (else call slq)")
    matvec = op if isinstance(op, BlockMatvec) else as_block_matvec(op, dim)
    eigs_seed, probe_seed = split_seed(_resolve_seed(rng, matvec))
    t0 = time.perf_counter()
    eig_op, eig_dim = _eigsh_operand(op, dim)
    eigs = lanczos_eigsh(eig_op, k, which, tol, k_bottom=k_b, ncv=ncv, max_matvecs=max_matvecs,
                         rng=eigs_seed, progress=progress, dim=eig_dim)
    t_eig = time.perf_counter() - t0
    if target_error is not None:
        result = adaptive_slq(op, target_error, confidence=confidence,
                              probes_per_round=num_probes,
                              num_steps=num_steps, probe=probe, rng=probe_seed,
                              reorthogonalize=reorthogonalize, deflate=eigs,
                              progress=progress, dim=dim, basis_device=basis_device)
    else:
        result = slq(op, num_probes, num_steps, probe=probe, rng=probe_seed,
                     reorthogonalize=reorthogonalize, deflate=eigs, callback=callback,
                     progress=progress, dim=dim, basis_device=basis_device)
    return with_deflation_cost(result, eigs.num_passes, eigs.num_matvecs, t_eig)


def adaptive_slq(op, target_error: float, *, confidence: float = 0.95, statistic=None,
                 probes_per_round: int = 10, max_probes: int = 200, num_steps: int = 80,
                 probe: str = "rademacher", rng=None, reorthogonalize: bool = True,
                 deflate=None, progress: bool = False, dim: int | None = None,
                 basis_device=None) -> SLQResult:
    """SLQ that adds probes until a statistic is known to a requested error.

    Rounds of ``probes_per_round`` probes run in lockstep (each round costs ``num_steps``
    passes over the data, whatever its width). After each round, with ``P`` probes so far,
    the ``statistic`` of all of them is evaluated, ``s = std(per-probe values) / sqrt(P)``,
    and the run stops once the two-sided ``confidence`` interval is narrow enough::

        t_{P-1}((1 + confidence) / 2) * s  <=  target_error,

    ``t_{P-1}`` the Student quantile (the normal one for large ``P``), or at ``max_probes``
    probes (a :class:`~lanczos_hessian.errors.NumericalWarning` then says how far it got).
    The statistic's error is then within ``target_error`` with probability about
    ``confidence``: the per-probe values of the trace are independent with finite variance
    (Hutchinson 1990; Avron and Toledo 2011 bound how many a relative accuracy needs), so
    their mean is asymptotically normal. Why an interval and not a bare standard error:
    ``|error| <= s`` holds in only about 68 % of runs, whatever ``P``; a requested error
    that a user can rely on needs the quantile, at about ``(1.96)^2 = 3.8`` times the probes
    for 95 %. Stopping at the first round that meets the rule biases ``s`` slightly low; on
    the demo network's Hessian the measured coverage of 95 % intervals was 94-95 %
    (``scripts/bench_ends.py``, docs/BENCHMARKS.md). ``confidence=0.6827`` asks for a
    standard error of ``target_error``.

    Parameters
    ----------
    target_error : float
        The half-width to reach (absolute, in the statistic's units); positive.
    confidence : float
        Coverage of the interval, in ``(0, 1)``; default 0.95.
    statistic : callable, optional
        ``statistic(result) -> Estimate`` of an :class:`SLQResult`; default its trace.
    probes_per_round : int
        Probes advanced together per round (at least 2: a standard error needs two).
    max_probes : int
        Probes at most.
    The other arguments are :func:`slq`'s; round ``r`` draws its probes from the seed
    ``SeedSequence(seed, spawn_key=(r,))`` (round 0 from ``seed`` itself, as :func:`slq`).
    Returns one :class:`SLQResult` of every probe drawn, with ``target_error`` and
    ``confidence`` set.
    """
    from ..errors import NumericalWarning

    _check_target(target_error, confidence)
    check_slq_arguments(probes_per_round, num_steps, probe)
    if probes_per_round < 2:
        raise ValueError(f"probes_per_round must be at least 2 (a standard error needs two "
                         f"probes), got {probes_per_round}")
    validate.integer("max_probes", max_probes, low=probes_per_round,
                     hint=f" (probes_per_round = {probes_per_round})")
    statistic = statistic or (lambda result: result.trace())
    matvec = op if isinstance(op, BlockMatvec) else as_block_matvec(op, dim)
    seed = _resolve_seed(rng, matvec)
    rounds = []
    while sum(r.num_probes for r in rounds) < max_probes:
        width = min(probes_per_round, max_probes - sum(r.num_probes for r in rounds))
        round_seed = seed if not rounds else int(
            np.random.SeedSequence(seed, spawn_key=(len(rounds),)).generate_state(1)[0])
        rounds.append(slq(matvec, max(width, 2), num_steps, probe=probe, rng=round_seed,
                          reorthogonalize=reorthogonalize, deflate=deflate,
                          progress=progress, basis_device=basis_device))
        merged = _merge_rounds(rounds, seed, target_error, confidence)
        estimate = statistic(merged)
        half_width = interval_half_width(estimate, confidence)
        logger.info("adaptive SLQ: %d probes, %.0f%% half-width %.3g (target %.3g)",
                    merged.num_probes, 100 * confidence, half_width, target_error)
        if half_width <= target_error:
            return merged
    warnings.warn(f"adaptive SLQ stopped at max_probes={max_probes} with a {confidence:.0%} "
                  f"half-width of {half_width:.3g}, above the target {target_error:.3g}",
                  NumericalWarning, stacklevel=2)
    return merged


def interval_half_width(estimate, confidence: float) -> float:
    """``t_{P-1}((1 + confidence) / 2) * stderr``: the half-width of the two-sided Student
    interval of a mean over ``P`` probes (infinite with fewer than two)."""
    from scipy.stats import t as student_t

    P = len(estimate.per_probe)
    if P < 2 or not np.isfinite(estimate.stderr):
        return float("inf")
    return float(student_t.ppf(0.5 + confidence / 2, P - 1) * estimate.stderr)


def _check_target(target_error, confidence) -> None:
    """The bad-input checks of :func:`adaptive_slq`, before any pass over the data."""
    validate.positive_float("target_error", target_error)
    validate.probability("confidence", confidence)


def _merge_rounds(rounds: list, seed: int, target_error: float, confidence: float) -> SLQResult:
    """One :class:`SLQResult` of the probes of several rounds (rows padded to one width)."""
    m = max(r.nodes.shape[1] for r in rounds)

    def stack(name, fill):
        rows = []
        for r in rounds:
            a = getattr(r, name)
            pad = np.full((a.shape[0], m - a.shape[1]), fill)
            rows.append(np.concatenate([a, pad], axis=1))
        return np.concatenate(rows, axis=0)

    first = rounds[0]
    timings = {}
    for r in rounds:
        for key, value in r.timings.items():
            timings[key] = timings.get(key, 0.0) + value
    return replace(
        first, nodes=stack("nodes", np.nan), weights=stack("weights", 0.0),
        alphas=stack("alphas", np.nan), betas=stack("betas", np.nan),
        num_nodes=np.concatenate([r.num_nodes for r in rounds]),
        num_probes=sum(r.num_probes for r in rounds),
        num_passes=sum(r.num_passes for r in rounds),
        num_matvecs=sum(r.num_matvecs for r in rounds), seed=seed, timings=timings,
        orthogonality=max(r.orthogonality for r in rounds),
        duplicate_nodes=sum(r.duplicate_nodes for r in rounds), target_error=target_error,
        confidence=confidence)


def _eigsh_operand(op, dim):
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
