"""How many eigenvalues stand out of the bulk: three rules on the top of a spectrum.

Sagun et al. (ICLR 2018 workshop, "Empirical analysis of the Hessian of over-parametrized
neural networks", Table 1) count the outliers of a Hessian spectrum from its largest
eigenvalues. With the values sorted descending, ``v_1 >= v_2 >= ... >= v_K``, each rule
returns a count ``c`` (the outliers are ``v_1 .. v_c``):

* **gap**: the largest consecutive gap ``v_i - v_{i+1}``; ``c = i``.
* **ratio**: the largest consecutive ratio ``v_i / v_{i+1}`` over pairs with both values
  above a positive ``floor`` (a ratio is scale-free but meaningless across zero or between
  rounding-level values); ``c = i``.
* **elbow**: the knee of the scree plot ``(i, v_i)``. Both coordinates are scaled to
  ``[0, 1]``; the knee is the point farthest below the chord from the first to the last
  point (for a decreasing curve the distance is ``(1 - x - y) / sqrt(2)``, Kneedle's
  "difference curve" up to a constant: Satopaa, Albrecht, Irwin and Raghavan, ICDCS
  Workshops 2011; we take its maximum and skip Kneedle's threshold test, since exactly one
  knee is wanted). The knee is the first bulk value, so ``c`` is the number of values
  before it.

Each rule gives 0 when nothing stands out (all values equal, no positive pair, no point
below the chord).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Default ``floor`` of the ratio rule, relative to ``max |v|``: ~sqrt(machine eps). An
#: eigenvalue computed to a relative residual tolerance ``tol * ||A||`` (``tol >= 1e-8`` in
#: practice) is only known to that accuracy, so ratios of smaller values are ratios of noise.
RELATIVE_FLOOR = 1e-8


@dataclass(frozen=True)
class OutlierCounts:
    """Outlier counts of the three rules (module docstring) and where they cut.

    Attributes
    ----------
    gap, ratio, elbow : int
        The counts.
    gap_size : float
        ``v_gap - v_{gap+1}`` (0 when ``gap = 0``).
    gap_bounds : tuple of float
        ``(v_gap, v_{gap+1})``: the last outlier and the first bulk value (NaN if ``gap = 0``).
    ratio_value : float
        ``v_ratio / v_{ratio+1}`` (NaN when no pair qualifies).
    elbow_distance : float
        Distance of the knee below the chord, in the unit-square coordinates.
    values : ndarray (K,)
        The input sorted descending.
    floor : float
        The ratio rule's floor.
    """

    gap: int
    ratio: int
    elbow: int
    gap_size: float
    gap_bounds: tuple
    ratio_value: float
    elbow_distance: float
    values: np.ndarray
    floor: float


def count_outliers(values, floor: float | None = None) -> OutlierCounts:
    """Outlier counts of the largest eigenvalues ``values`` (any order, ``K >= 2``).

    ``floor`` (default ``1e-8 * max |v|``, :data:`RELATIVE_FLOOR`) is the value both members
    of a pair must exceed for the ratio rule.
    """
    v = _sorted_descending(values)
    if floor is None:
        floor = RELATIVE_FLOOR * float(np.abs(v).max())
    if not floor >= 0:
        raise ValueError(f"floor must be non-negative, got {floor!r}")
    gap, gap_size = gap_count(v)
    ratio, ratio_value = ratio_count(v, floor)
    elbow, distance = elbow_count(v)
    bounds = (float(v[gap - 1]), float(v[gap])) if gap else (math.nan, math.nan)
    return OutlierCounts(gap=gap, ratio=ratio, elbow=elbow, gap_size=gap_size,
                         gap_bounds=bounds, ratio_value=ratio_value,
                         elbow_distance=distance, values=v, floor=float(floor))


def gap_count(values) -> tuple:
    """``(c, v_c - v_{c+1})`` at the largest consecutive gap of the descending values."""
    v = _sorted_descending(values)
    gaps = v[:-1] - v[1:]
    i = int(np.argmax(gaps))
    if gaps[i] <= 0:
        return 0, 0.0
    return i + 1, float(gaps[i])


def ratio_count(values, floor: float = 0.0) -> tuple:
    """``(c, v_c / v_{c+1})`` at the largest consecutive ratio among values ``> floor``."""
    v = _sorted_descending(values)
    positive = v[v > floor]
    if positive.size < 2:
        return 0, math.nan
    ratios = positive[:-1] / positive[1:]
    i = int(np.argmax(ratios))
    if ratios[i] <= 1:
        return 0, float(ratios[i])
    return i + 1, float(ratios[i])


def elbow_count(values) -> tuple:
    """``(c, d)``: the knee of the scree plot is the ``(c + 1)``-th largest value, ``d`` below
    the chord (module docstring)."""
    v = _sorted_descending(values)
    K = v.size
    span = v[0] - v[-1]
    if K < 3 or span <= 0:
        return 0, 0.0
    x = np.arange(K) / (K - 1)
    y = (v - v[-1]) / span
    distance = (1.0 - x - y) / math.sqrt(2.0)
    i = int(np.argmax(distance))
    if distance[i] <= 0:
        return 0, 0.0
    return i, float(distance[i])


def _sorted_descending(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size < 2:
        raise ValueError(f"need at least 2 eigenvalues to count outliers, got {v.size}")
    if not np.all(np.isfinite(v)):
        raise ValueError("eigenvalues must be finite (got NaN or Inf)")
    return np.sort(v)[::-1].copy()
