"""What stochastic Lanczos quadrature returns: the Gauss rules of its probes
(:class:`SLQResult`, with the statistics of
:class:`~lanczos_hessian.linalg.density.QuadratureStatistics`) and the record of one lockstep
step (:class:`SLQStep`); the rules from the tridiagonals (Golub-Welsch).

>>> import numpy as np
>>> nodes, weights = gauss_quadrature([0.0, 0.0], [1.0])
>>> nodes.round(12).tolist(), weights.round(12).tolist()
([-1.0, 1.0], [0.5, 0.5])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from . import density
from .lanczos import EPS

__all__ = ["SLQResult", "SLQStep", "gauss_quadrature", "quadrature_rules",
           "count_duplicate_nodes"]


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
