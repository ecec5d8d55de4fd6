"""Scalar summaries of a spectrum, each with its error bar: what is otherwise computed by hand.

For an ``n x n`` symmetric ``A`` with eigenvalues ``lambda_j`` (``lambda_max`` the largest,
``||A||_2 = max |lambda_j|``):

* **effective rank** (Roy and Vetterli, EUSIPCO 2007): ``exp(-sum_j p_j log p_j)`` with
  ``p_j = |lambda_j| / sum_k |lambda_k|``; between 1 (one eigenvalue) and ``n`` (all equal);
* **stable rank** (Rudelson and Vershynin, J. ACM 54(4), 2007): ``||A||_F^2 / ||A||_2^2 =
  tr(A^2) / max |lambda|^2``;
* **participation ratio** (the dimensionality of Gao and Ganguli 2015 and Recanatesi et al.
  2019): ``(tr A)^2 / tr(A^2)``;
* **negative mass**: the fraction of eigenvalues below 0, a bracketed
  :class:`~lanczos_hessian.linalg.resolution.Fraction` (its resolution printed with it), and
  the share of the spectrum's magnitude that is negative, ``sum_{lambda<0} |lambda| / sum
  |lambda|`` (Ghorbani et al. 2019 track its growth);
* **top-k trace share**: ``(lambda_1 + ... + lambda_k) / tr A`` for the ``k`` outliers of the
  run's verdict (:func:`~lanczos_hessian.analysis.outliers.outlier_verdict`).

From SLQ each is a smooth function of probe averages of ``int f dmu_p`` for ``f`` in
``|x|``, ``|x| log |x|``, ``x``, ``x^2``, ``max(-x, 0)``; its error bar is the jackknife
standard error over probes (leave one probe out; Efron and Stein, Ann. Stat. 9(3), 1981),
and ``lower``/``upper`` are three of them either side. ``x`` and ``x^2`` are integrated
exactly by the Gauss rules; ``|x|``, ``|x| log |x|`` and ``max(-x, 0)`` are continuous, so
their quadrature error is of the order of the node spacing times the mass near zero, which
the atom of a trained network makes small (its eigenvalues are near zero). From the exact
(dense) spectrum the values are exact (error 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..linalg.measures import exact_measure, probe_measures

#: Standard errors either side of a jackknife value for ``lower``/``upper``.
NUM_STDERRS = 3.0


@dataclass(frozen=True)
class Statistic:
    """One summary: ``value`` with its standard error and interval; ``source`` names where it
    comes from (``"SLQ"``, ``"exact"``)."""

    name: str
    value: float
    stderr: float
    lower: float
    upper: float
    source: str

    def as_row(self) -> dict:
        return {"statistic": self.name, "value": self.value, "stderr": self.stderr,
                "lower": self.lower, "upper": self.upper, "source": self.source}

    def __str__(self) -> str:
        if self.stderr == 0:
            return f"{self.value:.4g} ({self.source})"
        return (f"{self.value:.4g} +- {self.stderr:.2g} [{self.lower:.4g}, {self.upper:.4g}] "
                f"({self.source})")


def functionals(x, w) -> dict:
    """Per probe (rows of ``(P, M)`` measures) the integrals the summaries need."""
    a = np.abs(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        alog = np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0)), 0.0)
    return {"abs": np.sum(w * a, axis=1), "abslog": np.sum(w * alog, axis=1),
            "m1": np.sum(w * x, axis=1), "m2": np.sum(w * x * x, axis=1),
            "neg": np.sum(w * np.maximum(-x, 0.0), axis=1)}


def jackknife(func, parts: dict, name: str, source: str) -> Statistic:
    """``func`` of the probe means of ``parts`` with its jackknife standard error."""
    P = len(next(iter(parts.values())))
    value = float(func({k: v.mean() for k, v in parts.items()}))
    if P < 2:
        return Statistic(name, value, math.nan, math.nan, math.nan, source)
    total = {k: v.sum() for k, v in parts.items()}
    leave_out = np.array([func({k: (total[k] - v[i]) / (P - 1) for k, v in parts.items()})
                          for i in range(P)])
    stderr = float(math.sqrt((P - 1) / P * np.sum((leave_out - leave_out.mean()) ** 2)))
    return Statistic(name, value, stderr, value - NUM_STDERRS * stderr,
                     value + NUM_STDERRS * stderr, source)


def spectral_statistics(dim: int, *, nodes=None, weights=None, outliers=(), exact=None,
                        top=None, num_outliers: int = 0, extremes=()) -> list:
    """The summaries of the module docstring as :class:`Statistic` rows.

    The measure is the exact spectrum ``exact`` when given, else the SLQ rules
    (``nodes``, ``weights``, deflated ``outliers``). ``top`` are the largest eigenvalues
    known (descending) and ``num_outliers`` the verdict's count, for the top-k share;
    ``||A||_2 = max |lambda|`` is the largest of the measure's ``|nodes|``, ``|top|`` and
    ``extremes`` (eigenvalues known at either end, e.g. from a bottom-end eigensolver).
    """
    if exact is not None:
        x, w = exact_measure(exact)
        x, w, source = x[None, :], w[None, :], "exact"
    elif nodes is not None:
        x, w = probe_measures(nodes, weights, outliers=outliers, dim=dim)
        source = "SLQ"
    else:
        return []
    parts = functionals(x, w)
    known = [np.abs(x[w > 0]).max()]
    if top is not None and len(top):
        known.append(float(np.max(np.abs(top))))
    norm = float(max(known + [abs(float(v)) for v in extremes]))

    def exact_or_jackknife(func, name):
        stat = jackknife(func, parts, name, source)
        if source == "exact":
            return Statistic(name, stat.value, 0.0, stat.value, stat.value, source)
        return stat

    rows = [
        exact_or_jackknife(lambda p: math.exp(math.log(dim * p["abs"]) - p["abslog"] / p["abs"]),
                           "effective_rank"),
        exact_or_jackknife(lambda p: dim * p["m2"] / norm ** 2, "stable_rank"),
        exact_or_jackknife(lambda p: dim * p["m1"] ** 2 / p["m2"], "participation_ratio"),
        exact_or_jackknife(lambda p: p["neg"] / p["abs"], "negative_magnitude_share"),
    ]
    if top is not None and num_outliers > 0:
        head = float(np.sum(np.sort(np.asarray(top))[::-1][:num_outliers]))
        rows.append(exact_or_jackknife(lambda p: head / (dim * p["m1"]),
                                       f"top_{num_outliers}_trace_share"))
    return rows
