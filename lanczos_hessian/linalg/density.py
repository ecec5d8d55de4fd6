"""Spectral measures from Lanczos quadrature: densities, traces, moments, spectral masses.

Everything here is a pure function of numpy arrays (no torch), so it applies equally to a
fresh :class:`~lanczos_hessian.linalg.slq.SLQResult` and to arrays read back from an HDF5 file.

The measures
------------
Probe ``p`` of stochastic Lanczos quadrature (SLQ) gives Gauss nodes ``theta[p, i]`` and
weights ``w[p, i]`` (``sum_i w[p, i] = 1``): the Gauss rule of the measure
``mu_p = sum_j (u_p^T y_j)^2 delta(lambda_j)`` of the unit probe ``u_p`` (eigenpairs
``(lambda_j, y_j)`` of the ``n x n`` operator ``A``). Since ``E[u u^T] = I / n`` for the unit
probes of :mod:`~lanczos_hessian.linalg.slq`, ``mu_p`` is an unbiased estimate of the spectral
measure ``mu = (1/n) sum_j delta(lambda_j)`` [Ubaru, Chen and Saad, SIAM J. Matrix Anal.
Appl. 38(4), 2017; Lin, Saad and Yang, SIAM Rev. 58(1), 2016].

Arrays ``nodes``/``weights`` of shape ``(P, m)`` hold ``P`` probes (a 1-D pair is one probe).
Entries with a non-finite node or a zero weight are padding (a probe that ended early) and
are ignored. When ``k`` eigenvalues ``outliers`` were deflated (SLQ ran on ``P A P`` with
``P = I - Y Y^T``), probe ``p``'s measure of the whole spectrum is

    mu_p = sum_{j<k} (1/n) delta(outlier_j) + ((n - k)/n) * sum_i w[p, i] delta(theta[p, i]),

so ``dim = n`` is needed whenever ``outliers`` is not empty. Every estimate below is an
average over probes of a functional of ``mu_p``; its standard error is the sample standard
deviation over probes divided by ``sqrt(P)`` (ddof = 1; NaN for a single probe).

Moments are normalized by default: :func:`moment_estimates` gives ``m_q = int lambda^q
dmu = (1/n) tr(A^q)`` (``m_0 = 1``), the moments of the spectral density, and with
``normalized=False`` the traces ``tr(A^q) = n m_q``; :func:`trace_estimate` is ``tr(A)``.

Accuracy: a functional ``f`` is integrated exactly by an ``m``-node Gauss rule when ``f`` is a
polynomial of degree ``<= 2m - 1`` (moments, the trace: their ``stderr`` is their whole
error), and with an error decaying fast in ``m`` for smooth ``f`` (a wide kernel). Step
functions (:func:`fraction_below` and friends) are only known to within the weights of the
nodes next to the threshold: each is a :class:`~lanczos_hessian.linalg.resolution.Fraction`
whose bracket ``[lower, upper]`` holds that quadrature error and the probes' error, and
:meth:`QuadratureStatistics.density_band` brackets the smoothed density the same way
(:mod:`~lanczos_hessian.linalg.resolution`). The measures themselves (padding, deflation,
averaging) are in :mod:`~lanczos_hessian.linalg.measures`.
"""

from __future__ import annotations

import math

import numpy as np

from . import resolution
from .measures import (  # noqa: F401 (re-exported: the names this module always offered)
    Estimate,
    Moments,
    as_probe_arrays,
    average_measure,
    estimate,
    exact_measure,
    measure_support,
    pandas_module,
    probe_measures,
    quadrature_measure,
    wasserstein1,
)
from .resolution import DEFAULT_CONFIDENCE, Fraction

#: Ghorbani, Krishnan and Xiao (ICML 2019, Sec. 2.2) smooth the SLQ nodes with a Gaussian of
#: variance ``1e-5`` after mapping the spectrum to ``[-1, 1]``. We keep their choice: the
#: default kernel standard deviation is ``sqrt(1e-5)`` times the half range of the nodes.
GHORBANI_VARIANCE = 1e-5

#: Default grid size: the default width is ~3.2e-3 of the half range, i.e. 1.6e-3 of the
#: range; 4001 points over the range plus ``10 * width`` space the grid at about a sixth of
#: the width, so trapezoidal integrals of the density are accurate to ~1e-6.
DEFAULT_NUM_POINTS = 4001

#: The grid extends this many widths beyond the extreme nodes (Gaussian tail mass 3e-7).
GRID_MARGIN = 5.0


# ------------------------------------------------------------------ measures


# ------------------------------------------------------------------ density


def default_width(nodes, weights, *, outliers=()) -> float:
    """``sqrt(1e-5) * (max - min) / 2`` over the support (Ghorbani et al. 2019, see
    :data:`GHORBANI_VARIANCE`); ``max(|lambda|, 1)`` replaces the half range for a single point."""
    lo, hi = measure_support(nodes, weights, outliers)
    half_range = (hi - lo) / 2
    if half_range <= 0:
        half_range = max(abs(hi), 1.0)
    return math.sqrt(GHORBANI_VARIANCE) * half_range


def spectral_density(nodes, weights, grid=None, width=None,
                     num_points: int = DEFAULT_NUM_POINTS, *, outliers=(), dim=None) -> tuple:
    """Gaussian-kernel smoothed spectral density, averaged over probes.

    ``phi(t) = (1/P) sum_p sum_i w~[p, i] g_width(t - theta[p, i])`` with
    ``g_s(x) = exp(-x^2 / (2 s^2)) / (s sqrt(2 pi))`` and ``w~`` the weights of the whole
    spectrum (:func:`probe_measures`: deflated outliers of mass ``1/dim`` included). ``phi``
    is a probability density (it integrates to 1 over the real line); ``dim * phi`` counts
    eigenvalues per unit length.

    Parameters
    ----------
    nodes, weights : array (P, m) or (m,)
    grid : array, optional
        Points ``t``; default ``num_points`` equispaced points from ``min - 5 width`` to
        ``max + 5 width`` of the support.
    width : float, optional
        Standard deviation of the Gaussian kernel; default :func:`default_width`.
    num_points : int
        Size of the default grid (:data:`DEFAULT_NUM_POINTS`).
    outliers, dim
        Deflated eigenvalues and the operator size (see the module docstring).

    Returns
    -------
    grid, density : ndarray (G,) float64
    """
    all_nodes, all_weights = probe_measures(nodes, weights, outliers=outliers, dim=dim)
    if width is None:
        width = default_width(nodes, weights, outliers=outliers)
    width = float(width)
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"width (kernel standard deviation) must be positive and finite, "
                         f"got {width!r}")
    if grid is None:
        if int(num_points) < 2:
            raise ValueError(f"num_points must be at least 2, got {num_points!r}")
        lo, hi = measure_support(nodes, weights, outliers)
        grid = np.linspace(lo - GRID_MARGIN * width, hi + GRID_MARGIN * width, int(num_points))
    grid = np.asarray(grid, dtype=np.float64).reshape(-1)
    keep = all_weights > 0
    x = all_nodes[keep]
    w = all_weights[keep] / all_nodes.shape[0]
    return grid, _gaussian_mixture(grid, x, w, width)


def _gaussian_mixture(grid, centers, masses, width, chunk: int = 2048) -> np.ndarray:
    """``sum_i masses_i g_width(grid - centers_i)``, in grid chunks to bound memory."""
    out = np.empty(grid.size)
    norm = 1.0 / (width * math.sqrt(2 * math.pi))
    for start in range(0, grid.size, chunk):
        t = grid[start:start + chunk, None]
        z = (t - centers[None, :]) / width
        out[start:start + chunk] = norm * (np.exp(-0.5 * z * z) @ masses)
    return out


# ------------------------------------------------------------------ estimates


def trace_estimate(nodes, weights, *, dim, outliers=()) -> Estimate:
    """``tr(A)``: per probe ``n * sum_i w~[p, i] theta[p, i]``
    (``= sum outliers + (n - k) sum_i w[p, i] theta[p, i]`` after deflation)."""
    return moment_estimates(nodes, weights, 1, dim=dim, outliers=outliers,
                            normalized=False)[1]


def moment_estimates(nodes, weights, order: int, *, dim, outliers=(),
                     normalized: bool = True) -> Moments:
    """The spectral moments for ``q = 0 .. order``: a :class:`Moments` tuple indexed by ``q``.

    ``normalized=True``: ``m_q = (1/n) tr(A^q)``, per probe ``sum_i w~[p, i] theta[p, i]^q``
    (the ``q``-th moment of the probe's measure ``mu_p``; entry 0 is 1, the total mass).
    ``normalized=False``: ``tr(A^q)``, per probe ``n * sum_i w~[p, i] theta[p, i]^q``
    (entry 0 is ``n``). Either equals ``u_p^T A^q u_p`` (times ``n``) exactly for
    ``q <= 2m - 1`` (Gauss rule of ``m`` nodes); ``dim = n`` is needed in both cases (for
    the scale, and for the mass of deflated outliers).
    """
    if dim is None or not int(dim) >= 1:
        raise ValueError(f"dim (the operator size n) must be a positive integer, got {dim!r}")
    if not isinstance(order, (int, np.integer)) or order < 0:
        raise ValueError(f"order must be a non-negative integer, got {order!r}")
    x, w = probe_measures(nodes, weights, outliers=outliers, dim=dim)
    scale = 1.0 if normalized else float(dim)
    powers = np.ones_like(x)
    out = []
    for _ in range(order + 1):
        out.append(estimate(scale * np.sum(w * powers, axis=1)))
        powers = powers * x
    return Moments(out, normalized)


def fraction_below(nodes, weights, threshold: float, *, outliers=(), dim=None,
                   confidence: float = DEFAULT_CONFIDENCE) -> Fraction:
    """Fraction of the spectrum strictly below ``threshold``, ``mu((-inf, threshold))``, with
    its bracket (:mod:`~lanczos_hessian.linalg.resolution`)."""
    return resolution.fractions_below(nodes, weights, [threshold], outliers=outliers, dim=dim,
                                      confidence=confidence)[0]


def fraction_within(nodes, weights, band: float, *, outliers=(), dim=None,
                    confidence: float = DEFAULT_CONFIDENCE) -> Fraction:
    """Fraction of the spectrum with ``|lambda| <= band``, ``mu([-band, band])``, bracketed."""
    if not band >= 0:
        raise ValueError(f"band must be non-negative, got {band!r}")
    return resolution.fraction_between(nodes, weights, -band, band, outliers=outliers,
                                       dim=dim, confidence=confidence)


def mass_above(nodes, weights, threshold: float, *, outliers=(), dim=None,
               confidence: float = DEFAULT_CONFIDENCE) -> Fraction:
    """Fraction of the spectrum strictly above ``threshold``, ``mu((threshold, inf))``,
    bracketed (multiply by ``dim`` for an eigenvalue count)."""
    at_or_below = resolution.fractions_below(nodes, weights, [threshold], outliers=outliers,
                                             dim=dim, strict=False, confidence=confidence)[0]
    return resolution.complement(at_or_below)


class QuadratureStatistics:
    """The spectral statistics of stored Gauss rules, written once for every holder of them.

    A class that mixes this in has ``nodes`` and ``weights`` ``(P, m)`` (NaN/0 padded),
    ``outliers`` (deflated eigenvalues, mass ``1/dim`` each) and ``dim``: the SLQ result in
    memory (:class:`~lanczos_hessian.linalg.slq.SLQResult`) and the one read back from a file
    (:class:`~lanczos_hessian.analysis.spectrum.Quadrature`) give the same numbers.
    """

    def measure(self) -> tuple:
        """The probe-averaged measure of the whole spectrum (:func:`average_measure`)."""
        return average_measure(self.nodes, self.weights, outliers=self.outliers, dim=self.dim)

    def density(self, grid=None, width=None, num_points: int = DEFAULT_NUM_POINTS) -> tuple:
        """``(grid, phi)``: :func:`spectral_density` with the outliers included."""
        return spectral_density(self.nodes, self.weights, grid, width, num_points,
                                outliers=self.outliers, dim=self.dim)

    def trace(self) -> Estimate:
        """:func:`trace_estimate` of ``tr(A)``."""
        return trace_estimate(self.nodes, self.weights, dim=self.dim, outliers=self.outliers)

    def moments(self, order: int, normalized: bool = True) -> Moments:
        """:func:`moment_estimates`, ``q = 0 .. order``: the moments ``(1/n) tr(A^q)`` of the
        spectral density (``m_0 = 1``), or with ``normalized=False`` the traces
        ``tr(A^q)`` (entry 0 is ``n``)."""
        return moment_estimates(self.nodes, self.weights, order, dim=self.dim,
                                outliers=self.outliers, normalized=normalized)

    def density_band(self, grid=None, width=None, num_points: int = DEFAULT_NUM_POINTS,
                     confidence: float = DEFAULT_CONFIDENCE) -> tuple:
        """``(grid, phi, lower, upper)``: :meth:`density` and its band, the bounds (2) of
        :mod:`~lanczos_hessian.linalg.resolution` averaged over probes and widened by the
        probes' error at ``confidence``."""
        grid, phi = self.density(grid, width, num_points)
        if width is None:
            width = default_width(self.nodes, self.weights, outliers=self.outliers)
        lower, upper = resolution.density_bounds(self.nodes, self.weights, grid, width,
                                                 outliers=self.outliers, dim=self.dim)
        return (grid, phi) + resolution.band(lower, upper, confidence)

    def fraction_below(self, threshold: float = 0.0,
                       confidence: float = DEFAULT_CONFIDENCE) -> Fraction:
        """:func:`fraction_below`: the fraction of eigenvalues below ``threshold``."""
        return fraction_below(self.nodes, self.weights, threshold, outliers=self.outliers,
                              dim=self.dim, confidence=confidence)

    def fraction_within(self, band: float, confidence: float = DEFAULT_CONFIDENCE) -> Fraction:
        """:func:`fraction_within`: the fraction of eigenvalues with ``|lambda| <= band``."""
        return fraction_within(self.nodes, self.weights, band, outliers=self.outliers,
                               dim=self.dim, confidence=confidence)

    def mass_above(self, threshold: float, confidence: float = DEFAULT_CONFIDENCE) -> Fraction:
        """:func:`mass_above`: the fraction of eigenvalues above ``threshold``."""
        return mass_above(self.nodes, self.weights, threshold, outliers=self.outliers,
                          dim=self.dim, confidence=confidence)

    def nearest_resolved_threshold(self, target: float = 0.0, side: str = "below") -> float:
        """The threshold nearest ``target`` on ``side`` whose fraction below is resolved
        (:func:`~lanczos_hessian.linalg.resolution.nearest_resolved_threshold`)."""
        return resolution.nearest_resolved_threshold(self.nodes, self.weights, target, side,
                                                     outliers=self.outliers, dim=self.dim)

    def to_dataframe(self, per: str = "node"):
        """The rules as a ``pandas.DataFrame`` (pandas is optional: ImportError naming
        ``pip install pandas`` without it).

        ``per="node"``: one row per Gauss node of every probe (padding dropped), columns
        ``probe``, ``step`` (0-based node index within the probe, ascending nodes),
        ``node`` (``theta[p, i]``), ``weight`` (``w[p, i]``, summing to 1 over a probe, as
        stored) and ``mass`` (its mass in the probe's measure of the whole spectrum,
        ``w[p, i] (n - k)/n`` after deflating ``k`` outliers), then one row per deflated
        outlier with ``probe = -1`` and mass ``1/n``. ``per="probe"``: one row per probe,
        columns ``probe``, ``num_nodes``, ``trace`` (``n u_p^T A u_p``), ``mean``
        (``u_p^T A u_p``, the normalized first moment), ``fraction_below_0`` (the Gauss
        rule's value) and its quadrature bounds ``fraction_below_0_lower``/``_upper`` (no
        probe error: they hold the probe's own measure exactly,
        :mod:`~lanczos_hessian.linalg.resolution`).
        """
        pandas = pandas_module(f"{type(self).__name__}.to_dataframe")
        if per == "node":
            return pandas.DataFrame(self._node_rows())
        if per == "probe":
            return pandas.DataFrame(self._probe_rows())
        raise ValueError(f"per must be 'node' or 'probe', got {per!r}")

    def _node_rows(self) -> dict:
        nodes, weights = as_probe_arrays(self.nodes, self.weights)
        outliers = np.asarray(self.outliers, dtype=np.float64).reshape(-1)
        bulk = (self.dim - outliers.size) / self.dim if outliers.size else 1.0
        probe, step = np.nonzero(weights > 0)
        return {"probe": np.concatenate([probe, np.full(outliers.size, -1)]),
                "step": np.concatenate([step, np.arange(outliers.size)]),
                "node": np.concatenate([nodes[probe, step], outliers]),
                "weight": np.concatenate([weights[probe, step], np.full(outliers.size, np.nan)]),
                "mass": np.concatenate([weights[probe, step] * bulk,
                                        np.full(outliers.size, 1.0 / self.dim)])}

    def _probe_rows(self) -> dict:
        first = self.moments(1)[1].per_probe
        _, weights = as_probe_arrays(self.nodes, self.weights)
        value, lower, upper = resolution.whole_spectrum_bounds(
            self.nodes, self.weights, [0.0], outliers=self.outliers, dim=self.dim)
        return {"probe": np.arange(len(first)), "num_nodes": (weights > 0).sum(axis=1),
                "trace": self.dim * first, "mean": first,
                "fraction_below_0": value[:, 0], "fraction_below_0_lower": lower[:, 0],
                "fraction_below_0_upper": upper[:, 0]}
