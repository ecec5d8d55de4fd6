"""Discrete spectral measures and stochastic estimates: the data every statistic of
:mod:`~lanczos_hessian.linalg.density` starts from.

Arrays ``nodes``/``weights`` of shape ``(P, m)`` hold the Gauss rules of ``P`` probes (a 1-D
pair is one probe); an entry with a non-finite node or a zero weight is padding (a probe that
ended early). With ``k`` deflated eigenvalues ``outliers`` of an ``n x n`` operator, probe
``p``'s measure of the whole spectrum is

    mu_p = sum_{j<k} (1/n) delta(outlier_j) + ((n - k)/n) * sum_i w[p, i] delta(theta[p, i]).

An :class:`Estimate` is the mean over probes of a functional of ``mu_p`` with its standard
error (sample standard deviation over probes, ddof = 1, divided by ``sqrt(P)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A stochastic estimate: mean over probes, its standard error, and the probe values.

    ``stderr = std(per_probe, ddof=1) / sqrt(P)`` (NaN when ``P = 1``).
    """

    value: float
    stderr: float
    per_probe: np.ndarray

    @property
    def num_probes(self) -> int:
        return len(self.per_probe)

    def __float__(self) -> float:
        return float(self.value)

    def __repr__(self) -> str:
        return f"Estimate({self.value:.6g} +- {self.stderr:.2g}, {self.num_probes} probes)"


class Moments(tuple):
    """Estimates of the spectral moments ``q = 0 .. order``, indexed by ``q`` (a tuple of
    :class:`Estimate`).

    ``normalized=True`` (the default of :func:`moment_estimates` and
    :meth:`QuadratureStatistics.moments`): ``m_q = (1/n) tr(A^q) = int lambda^q dmu``, the
    ``q``-th moment of the spectral density ``mu = (1/n) sum_j delta(lambda_j)``, so
    ``m_0 = 1`` (the total mass) and ``m_1`` is the mean eigenvalue. ``normalized=False``:
    the traces ``tr(A^q) = n m_q``, so entry 0 is ``n`` and entry 1 the trace.
    """

    normalized: bool

    def __new__(cls, estimates, normalized: bool):
        moments = super().__new__(cls, estimates)
        moments.normalized = bool(normalized)
        return moments

    @property
    def values(self) -> np.ndarray:
        """The estimates' values, ``(order + 1,)``."""
        return np.array([m.value for m in self])

    @property
    def stderrs(self) -> np.ndarray:
        """Their standard errors, ``(order + 1,)``."""
        return np.array([m.stderr for m in self])

    def __repr__(self) -> str:
        what = "(1/n) tr(A^q)" if self.normalized else "tr(A^q)"
        shown = ", ".join(f"{q}: {m.value:.6g} +- {m.stderr:.2g}" for q, m in enumerate(self))
        return f"Moments({what}; {shown})"


def pandas_module(what: str):
    """``pandas``, imported for ``what`` (a ``to_dataframe`` method); a clear ImportError
    naming the install command when it is not installed (pandas is an optional extra)."""
    try:
        import pandas
    except ImportError as exc:
        raise ImportError(f"{what} needs pandas, which is not installed: pip install pandas "
                          "(or pip install 'lanczos_hessian[analysis]')") from exc
    return pandas


def estimate(per_probe) -> Estimate:
    """The :class:`Estimate` of a vector of per-probe values."""
    values = np.asarray(per_probe, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("no probe values to average")
    stderr = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan
    return Estimate(float(values.mean()), stderr, values)


# ------------------------------------------------------------------ measures


def probe_measures(nodes, weights, *, outliers=(), dim=None) -> tuple:
    """Per-probe measures of the whole spectrum as ``(P, m + k)`` arrays, weights summing to 1.

    Padding (non-finite node or zero weight) gets node 0 and weight 0, so that sums over a
    row need no masking. Deflated ``outliers`` (``k`` of them) are appended to every row
    with mass ``1/dim`` each, and the quadrature weights are scaled by ``(dim - k) / dim``.
    """
    nodes, weights = as_probe_arrays(nodes, weights)
    outliers = np.asarray(outliers, dtype=np.float64).reshape(-1)
    k = outliers.size
    if k == 0:
        return nodes, weights
    if dim is None:
        raise ValueError("dim (the operator size n) is required when outliers are given")
    if not k < dim:
        raise ValueError(f"{k} outliers leave no bulk in dimension dim={dim}")
    if not np.all(np.isfinite(outliers)):
        raise ValueError("outliers must be finite")
    P = nodes.shape[0]
    all_nodes = np.concatenate([nodes, np.broadcast_to(outliers, (P, k))], axis=1)
    all_weights = np.concatenate(
        [weights * ((dim - k) / dim), np.full((P, k), 1.0 / dim)], axis=1)
    return all_nodes, all_weights


def average_measure(nodes, weights, *, outliers=(), dim=None) -> tuple:
    """The probe-averaged discrete measure ``(1/P) sum_p mu_p``: 1-D nodes (ascending) and
    weights summing to 1 (padding dropped; each deflated outlier included once, with mass
    ``1/dim``)."""
    all_nodes, all_weights = probe_measures(nodes, weights, outliers=outliers, dim=dim)
    P, k = all_nodes.shape[0], np.size(outliers)
    m = all_nodes.shape[1] - k
    keep = all_weights[:, :m] > 0
    x = np.concatenate([all_nodes[:, :m][keep], all_nodes[0, m:]])
    w = np.concatenate([all_weights[:, :m][keep] / P, all_weights[0, m:]])
    order = np.argsort(x, kind="stable")
    return x[order], w[order]


def quadrature_measure(result) -> tuple:
    """:func:`average_measure` of an SLQ result (any object with ``nodes``, ``weights``,
    ``outliers`` and ``dim``)."""
    return average_measure(result.nodes, result.weights, outliers=result.outliers,
                           dim=result.dim)


def exact_measure(eigenvalues) -> tuple:
    """The spectral measure ``(1/n) sum_j delta(lambda_j)``: sorted values, weights ``1/n``."""
    values = np.sort(np.asarray(eigenvalues, dtype=np.float64).reshape(-1))
    if values.size == 0:
        raise ValueError("no eigenvalues given")
    return values, np.full(values.size, 1.0 / values.size)


def wasserstein1(nodes_a, weights_a, nodes_b, weights_b) -> float:
    """Wasserstein-1 distance ``int |F_a(t) - F_b(t)| dt`` of two discrete measures on the line.

    Each measure is normalized to total mass 1 (padding with a non-finite node or zero
    weight is dropped). ``F`` is the cumulative distribution function; the integral is exact
    (piecewise constant integrand between the merged support points).
    """
    xa, wa = clean_measure(nodes_a, weights_a, "a")
    xb, wb = clean_measure(nodes_b, weights_b, "b")
    support = np.concatenate([xa, xb])
    order = np.argsort(support, kind="stable")
    signed = np.concatenate([wa, -wb])[order]
    cdf_diff = np.cumsum(signed)[:-1]
    return float(np.sum(np.abs(cdf_diff) * np.diff(support[order])))


def clean_measure(nodes, weights, name):
    x = np.asarray(nodes, dtype=np.float64).reshape(-1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if x.shape != w.shape:
        raise ValueError(f"measure {name}: nodes and weights differ in size "
                         f"({x.size} vs {w.size})")
    if np.any(w < 0) or np.any(np.isnan(w)):
        raise ValueError(f"measure {name}: weights must be non-negative")
    keep = np.isfinite(x) & (w > 0)
    total = w[keep].sum()
    if not total > 0:
        raise ValueError(f"measure {name} has no mass")
    return x[keep], w[keep] / total


# ------------------------------------------------------------------ helpers


def as_probe_arrays(nodes, weights) -> tuple:
    """``(P, m)`` float64 copies with padding set to node 0, weight 0."""
    x = np.asarray(nodes, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if x.ndim == 1:
        x, w = x[None, :], w.reshape(1, -1)
    if x.ndim != 2 or x.shape != w.shape:
        raise ValueError(f"nodes and weights must be (P, m) arrays of one shape, got "
                         f"{x.shape} and {w.shape}")
    if np.any(w < 0) or np.any(np.isnan(w)):
        raise ValueError("weights must be non-negative")
    pad = ~np.isfinite(x) | (w == 0)
    return np.where(pad, 0.0, x), np.where(pad, 0.0, w)


def measure_support(nodes, weights, outliers) -> tuple:
    """``(min, max)`` over the nodes of positive weight and the outliers."""
    x, w = as_probe_arrays(nodes, weights)
    values = np.concatenate([x[w > 0], np.asarray(outliers, dtype=np.float64).reshape(-1)])
    if values.size == 0:
        raise ValueError("the measure has no nodes of positive weight")
    return float(values.min()), float(values.max())
