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
:class:`~lanczos_hessian.operators.CurvatureOperator`) thus makes exactly ``num_steps``
passes, whatever ``P``. Each probe's step is, with full reorthogonalization, the step of
:class:`~lanczos_hessian.lanczos.LanczosProcess` (``alpha = q^T A q``, then classical
Gram-Schmidt twice against the probe's own basis), so lockstep and one-probe-at-a-time
runs give the same numbers.

Breakdown: when ``beta_j <= eps * ||T|| * max(100, sqrt(n))`` (the rule of
:mod:`~lanczos_hessian.lanczos`) the Krylov space of the probe is invariant and its
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
:func:`~lanczos_hessian.eigen.lanczos_eigsh`), SLQ runs on ``P A P`` restricted to the
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
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.linalg
import torch
from scipy.sparse.linalg import LinearOperator

from . import density
from .basis import TensorBasis
from ..parallel.distributed import common_seed
from .eigsh import EigshResult, lanczos_eigsh
from .lanczos import EPS, orthogonalize
from .linop import BlockMatvec, as_block_matvec
from ..parallel.sharding import Shard, ShardedBasis, ShardedMatvec

logger = logging.getLogger(__name__)

PROBES = ("rademacher", "gaussian")

#: Tolerance on ``max |Y^T Y - I|`` for deflation vectors (they are re-orthonormalized
#: afterwards; this only rejects vectors that are not eigenvectors of one symmetric matrix).
ORTHONORMALITY_TOL = 1e-3


@dataclass(frozen=True)
class SLQResult:
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

    # Convenience wrappers of lanczos_hessian.density -------------------------------
    def measure(self) -> tuple:
        """Probe-averaged measure of the whole spectrum (:func:`density.quadrature_measure`)."""
        return density.quadrature_measure(self)

    def density(self, grid=None, width=None, num_points: int = density.DEFAULT_NUM_POINTS):
        """``(grid, phi)``: :func:`density.spectral_density` with the outliers included."""
        return density.spectral_density(self.nodes, self.weights, grid, width, num_points,
                                        outliers=self.outliers, dim=self.dim)

    def trace(self) -> density.Estimate:
        """:func:`density.trace_estimate` of ``tr(A)``."""
        return density.trace_estimate(self.nodes, self.weights, dim=self.dim,
                                      outliers=self.outliers)

    def moments(self, order: int) -> tuple:
        """:func:`density.moment_estimates`: ``tr(A^q)``, ``q = 0 .. order``."""
        return density.moment_estimates(self.nodes, self.weights, order, dim=self.dim,
                                        outliers=self.outliers)

    def fraction_below(self, threshold: float) -> density.Estimate:
        return density.fraction_below(self.nodes, self.weights, threshold,
                                      outliers=self.outliers, dim=self.dim)

    def fraction_within(self, band: float) -> density.Estimate:
        return density.fraction_within(self.nodes, self.weights, band,
                                       outliers=self.outliers, dim=self.dim)

    def mass_above(self, threshold: float) -> density.Estimate:
        return density.mass_above(self.nodes, self.weights, threshold,
                                  outliers=self.outliers, dim=self.dim)


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


def _resolve_seed(rng) -> int:
    """An integer seed: ``rng`` itself, fresh entropy for None, or drawn from a Generator."""
    if rng is None:  # 63 bits (an int64 attribute); drawn on rank 0, shared by all ranks
        return common_seed(None)
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(2**63))
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0:
        return int(rng)
    raise TypeError(f"rng must be None, a non-negative int or a numpy Generator, got {rng!r}")


# ------------------------------------------------------------------ deflation


class _Projector:
    """``P = I - Q Q^T`` for an orthonormal basis ``Q`` of ``span(Y)`` (identity if ``k = 0``).

    With a :class:`~lanczos_hessian.sharding.Shard`, ``Y`` is whole and ``Q`` keeps this
    rank's rows; ``Q^T W`` is summed over ranks.
    """

    def __init__(self, Y: torch.Tensor | None, shard=None):
        self.shard = shard or Shard(0 if Y is None else Y.shape[0], 0, 1)
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


# ------------------------------------------------------------------ lockstep Lanczos


class _LockstepLanczos:
    """``P`` independent Lanczos recurrences advanced by one block product per step."""

    def __init__(self, matvec: BlockMatvec, U: torch.Tensor, num_steps: int,
                 reorthogonalize: bool, project: _Projector, basis_device=None,
                 basis_factory=None, shard=None):
        rows, P = U.shape
        self.shard = shard or Shard(rows, 0, 1)
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
        self.bases = ([self._sharded(make(p, rows, capacity)) for p in range(P)]
                      if reorthogonalize else None)
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
        tol = EPS * np.maximum(self.anorm[idx], EPS) * max(100.0, math.sqrt(self.dim))
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

    def _sharded(self, store):
        """A probe's store, wrapped so that its inner products sum over ranks when split."""
        return ShardedBasis(store, self.shard) if self.shard.is_split else store

    def _reorthogonalized(self, idx, Q, W):
        """``alpha = q^T A q``; then CGS twice against each probe's own basis (with ``q``)."""
        alpha = self.shard.sum((Q * W).sum(dim=0)).cpu().numpy()
        columns = []
        for c, p in enumerate(idx):
            self.bases[p].append(Q[:, c])
            w, _ = orthogonalize(W[:, c], self.bases[p])
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

    def state_dict(self) -> tuple:
        """``(small, vectors)`` to continue exactly; the bases are restored by their stores."""
        small = {"beta_prev": self.beta_prev.copy(), "alphas": self.alphas.copy(),
                 "betas": self.betas.copy(), "num_nodes": self.num_nodes.copy(),
                 "active": self.active.copy(), "anorm": self.anorm.copy(),
                 "timing_operator": self.timings["operator"],
                 "timing_orthogonalization": self.timings["orthogonalization"]}
        return small, [self.q, self.q_prev]

    def load_state_dict(self, small: dict, q, q_prev) -> None:
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


# ------------------------------------------------------------------ drivers


def _validate(num_probes, num_steps, probe):
    for name, value in (("num_probes", num_probes), ("num_steps", num_steps)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if probe not in PROBES:
        raise ValueError(f"unknown probe={probe!r}; choose one of {PROBES}")


def _start_vectors(probes, num_probes, probe, rng, n, device, project, shard) -> tuple:
    """Unit columns ``P z / ||P z||`` (this rank's rows of them when sharded) and the seed
    (None for explicit probes)."""
    if probes is None:
        seed = _resolve_seed(rng)
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
        basis_device=None, basis_factory=None, checkpoint=None, shard=None) -> SLQResult:
    """Stochastic Lanczos quadrature with ``num_probes`` probes of ``num_steps`` steps each.

    Parameters
    ----------
    op : LinearOperator, CurvatureOperator, array, tensor, callable or BlockMatvec
        The symmetric ``n x n`` operator (see :mod:`lanczos_hessian.linop`); a
        :class:`~lanczos_hessian.linop.BlockMatvec` is used as is (its counters keep
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
        A tqdm progress bar over steps.
    dim : int, optional
        Size of a bare matvec callable.
    probes : array (n, num_probes), optional
        Explicit raw probes instead of random ones (projected and normalized here).
    basis_device : torch.device or str, optional
        Where the ``P`` stored bases (``P * num_steps * n`` float64 numbers) live; default
        the operator's device, ``"cpu"`` to keep them in host memory (same numbers).
    basis_factory : callable, optional
        ``basis_factory(p, n, capacity)`` returns probe ``p``'s basis store (e.g. an
        :class:`~lanczos_hessian.basis.HDF5Basis` on disk); overrides ``basis_device``.
    checkpoint : object, optional
        ``restore(lanczos) -> step or None`` before the first step and
        ``commit(lanczos, step, finished)`` after every step: a killed run resumes from its
        last committed step (:class:`lanczos_hessian.checkpoint.SLQCheckpointer`).
    shard : Shard, optional
        Under ``torch.distributed``, split every Lanczos vector and basis by rows across the
        ranks (:mod:`lanczos_hessian.sharding`): each rank stores ``1 / W`` of the ``P``
        bases, inner products are summed over ranks, and every rank ends with the same
        result. ``basis_factory`` then makes stores of this rank's rows.

    Returns
    -------
    SLQResult
    """
    _validate(num_probes, num_steps, probe)
    start = time.perf_counter()
    matvec = op if isinstance(op, BlockMatvec) else as_block_matvec(op, dim)
    n = matvec.dim
    device = matvec.device
    outliers, outlier_residuals, Y = _parse_deflate(deflate, n, device)
    shard = shard if shard is not None and shard.is_split else Shard(n, 0, 1)
    project = _Projector(Y, shard)
    U, seed = _start_vectors(probes, num_probes, probe, rng, n, device, project, shard)
    if shard.is_split:
        matvec = ShardedMatvec(matvec, shard)
    passes0, vectors0 = matvec.num_passes, matvec.num_vectors
    lanczos = _LockstepLanczos(matvec, U, num_steps, reorthogonalize, project, basis_device,
                               basis_factory, shard)
    steps = 0
    if checkpoint is not None:
        steps = checkpoint.restore(lanczos) or 0
        passes0 -= steps  # the restored steps count as this run's passes
        vectors0 -= int(lanczos.num_nodes.sum())
    bar = _progress_bar(progress, num_steps, steps)
    while steps < num_steps and lanczos.active.any():
        was_active = lanczos.active.copy()
        lanczos.step()
        steps += 1
        if bar is not None:
            bar.update(1)
        if callback is not None:
            callback(steps, _step_state(lanczos, steps, was_active, matvec, passes0,
                                        vectors0, time.perf_counter() - start))
        if checkpoint is not None:
            checkpoint.commit(lanczos, steps, not (steps < num_steps and lanczos.active.any()))
    if bar is not None:
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


def deflated_slq(op, k_top: int, k_bottom: int = 0, num_probes: int = 10,
                 num_steps: int = 80, *, tol: float = 1e-6, probe: str = "rademacher",
                 rng=None, reorthogonalize: bool = True, ncv: int | None = None,
                 max_matvecs: int | None = None, callback=None, progress: bool = False,
                 dim: int | None = None, basis_device=None) -> SLQResult:
    """The ``k_top`` largest and ``k_bottom`` smallest eigenpairs by
    :func:`~lanczos_hessian.eigen.lanczos_eigsh`, then :func:`slq` deflated by them.

    One eigensolver call: ``which="LA"`` (``k_bottom = 0``), ``"SA"`` (``k_top = 0``), or
    ``"BE"`` when ``k_top - k_bottom`` is 0 or 1 (its split); otherwise one ``"LA"`` and one
    ``"SA"`` call. ``tol`` (default ``1e-6``, the eigensolver's) bounds the residuals
    ``||A y - lambda y|| <= tol ||A||``; an unconverged pair still deflates a valid subspace
    but its coupling to the bulk (its residual) is left out (a
    :class:`~lanczos_hessian.errors.NumericalWarning` says so). ``num_passes`` and
    ``num_matvecs`` of the result count ALL applications (eigensolver and SLQ);
    ``deflation_passes``/``deflation_matvecs`` the eigensolver's part. ``rng`` seeds both;
    the other arguments are :func:`slq`'s and :func:`~lanczos_hessian.eigen.lanczos_eigsh`'s.
    """
    _validate(num_probes, num_steps, probe)
    for name, value in (("k_top", k_top), ("k_bottom", k_bottom)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if k_top + k_bottom < 1:
        raise ValueError("deflated_slq needs k_top + k_bottom >= 1 (else call slq)")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    calls = []
    if k_bottom == 0:
        calls.append(("LA", k_top))
    elif k_top == 0:
        calls.append(("SA", k_bottom))
    elif k_top - k_bottom in (0, 1):
        calls.append(("BE", k_top + k_bottom))
    else:
        calls += [("SA", k_bottom), ("LA", k_top)]
    t0 = time.perf_counter()
    eig_op, eig_dim = _eigsh_operand(op, dim)
    values, vectors, residuals = [], [], []
    deflation_passes = deflation_matvecs = 0
    for which, k in calls:
        res = lanczos_eigsh(eig_op, k, which, tol, ncv=ncv, max_matvecs=max_matvecs,
                            rng=gen, progress=progress, dim=eig_dim)
        values.append(res.eigenvalues)
        vectors.append(res.eigenvectors)
        residuals.append(res.residual_bounds)
        deflation_passes += res.num_passes
        deflation_matvecs += res.num_matvecs
    t_eig = time.perf_counter() - t0
    deflate = (np.concatenate(values), np.concatenate(vectors, axis=1),
               np.concatenate(residuals))
    result = slq(op, num_probes, num_steps, probe=probe, rng=gen,
                 reorthogonalize=reorthogonalize, deflate=deflate, callback=callback,
                 progress=progress, dim=dim, basis_device=basis_device)
    return replace(result,
                   num_passes=result.num_passes + deflation_passes,
                   num_matvecs=result.num_matvecs + deflation_matvecs,
                   deflation_passes=deflation_passes, deflation_matvecs=deflation_matvecs,
                   timings={**result.timings, "eigsh": t_eig,
                            "total": result.timings["total"] + t_eig})


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


def _progress_bar(progress, total, initial=0):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="SLQ", unit="step", leave=False)
