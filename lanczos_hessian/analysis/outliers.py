"""How many eigenvalues stand out of the bulk: five rules on the top of a spectrum.

Sagun et al. (ICLR 2018 workshop, "Empirical analysis of the Hessian of over-parametrized
neural networks", arXiv 1706.04454, Table 1) count the outliers of a Hessian spectrum from its
largest eigenvalues, by the largest gap and by a heuristic threshold. With the values sorted
descending, ``v_1 >= v_2 >= ... >= v_K``, each rule returns a count ``c`` (the outliers are
``v_1 .. v_c``). What each computes, why, and how it fails:

* **gap**: the largest consecutive gap ``v_i - v_{i+1}``; ``c = i``. The paper's first
  column. *Fails* when the outliers themselves are spread: an absolute gap is largest where
  the values are largest, so one dominant eigenvalue (``v_1`` well above ``v_2``) wins over
  the step from the last outlier to a bulk an order of magnitude lower (the
  "``lambda_1 - lambda_2`` accident"), and the count is 1.
* **ratio**: the largest consecutive ratio ``v_i / v_{i+1}`` over pairs with both values
  above a positive ``floor`` (a ratio is scale-free but meaningless across zero or between
  rounding-level values); ``c = i``. This is the gap of ``log v``. *Fails* the same way when
  ``v_1 / v_2`` exceeds the step to the bulk, and inside a bulk that decays towards zero
  (ratios of small values grow), hence the floor.
* **elbow**: the knee of the scree plot ``(i, v_i)``. Both coordinates are scaled to
  ``[0, 1]``; the knee is the point farthest below the chord from the first to the last
  point (for a decreasing curve the distance is ``(1 - x - y) / sqrt(2)``, Kneedle's
  "difference curve" up to a constant: Satopaa, Albrecht, Irwin and Raghavan, ICDCS
  Workshops 2011; we take its maximum and skip Kneedle's threshold test, since exactly one
  knee is wanted). The knee is the first bulk value, so ``c`` is the number of values
  before it. *Fails* when there is no knee to find (a smooth decay: the count then depends
  on ``K``), and drifts with ``K`` since the chord's end is ``v_K``.
* **threshold**: the number of values above a ``cutoff``, the paper's "heuristic
  threshold" column (the paper gives a cutoff per network, beside the mean eigenvalue
  ``tr(H) / M``). Exact when the cutoff separates the groups; *fails* by construction when
  the cutoff is set for another curvature scale: the whole spectrum scales with the loss
  (a network trained longer has every eigenvalue smaller), so a cutoff only transfers
  between networks at the same mean eigenvalue.
* **below_top** (robust to the accident): the largest ratio ``v_i / v_{i+1}`` over ranks
  ``i >= 2`` (both values above ``floor``); ``c = i``. Chosen over the largest absolute gap
  below the top because the outliers of a trained classifier spread over a decade, where an
  absolute gap again favours the larger values, while the log scale makes the step into the
  bulk comparable to the steps between outliers. *Fails* when there is exactly one outlier:
  it cannot return 1 (its count is ``>= 2`` by construction, the step it finds then lies in
  the bulk), so it says nothing for two classes (``k - 1 = 1``); and like the ratio rule it
  needs ``K`` well above the expected count so that the bulk is sampled.

Each rule gives 0 when nothing stands out (all values equal, no positive pair, no point
below the chord, no value above the cutoff). :func:`step_after` gives the size of the step
after a chosen rank, ``v_r / v_{r+1}``, the statistic to read when a count is expected
(``r = k - 1`` for ``k`` classes): a count is an argmax, the step is a measurement.
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
        The counts of the paper's gap rule, the ratio rule and the elbow.
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
        The floor of the ratio and below-top rules.
    below_top : int
        The count of the below-top rule (largest ratio over ranks ``>= 2``; 0 when fewer
        than two pairs qualify).
    below_top_ratio : float
        ``v_below_top / v_{below_top+1}`` (NaN when no pair qualifies).
    threshold : int or None
        The number of values above ``cutoff`` (None when no cutoff was given).
    cutoff : float or None
        The threshold rule's cutoff.
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
    below_top: int = 0
    below_top_ratio: float = math.nan
    threshold: int | None = None
    cutoff: float | None = None

    def as_dict(self) -> dict:
        """The counts by rule name: ``gap``, ``ratio``, ``elbow``, ``below_top`` and, when a
        cutoff was given, ``threshold``."""
        out = {"gap": self.gap, "ratio": self.ratio, "elbow": self.elbow,
               "below_top": self.below_top}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out

    def disagree(self) -> bool:
        """True when the rules do not all give the same count."""
        return len(set(self.as_dict().values())) > 1


def count_outliers(values, floor: float | None = None,
                   cutoff: float | None = None) -> OutlierCounts:
    """Outlier counts of the largest eigenvalues ``values`` (any order, ``K >= 2``).

    ``floor`` (default ``1e-8 * max |v|``, :data:`RELATIVE_FLOOR`) is the value both members
    of a pair must exceed for the ratio and below-top rules. ``cutoff`` (optional) is the
    threshold rule's cutoff, e.g. the value the paper's Table 1 gives for a network.
    """
    v = _sorted_descending(values)
    if floor is None:
        floor = RELATIVE_FLOOR * float(np.abs(v).max())
    if not floor >= 0:
        raise ValueError(f"floor must be non-negative, got {floor!r}")
    gap, gap_size = gap_count(v)
    ratio, ratio_value = ratio_count(v, floor)
    elbow, distance = elbow_count(v)
    below, below_value = below_top_count(v, floor)
    above = threshold_count(v, cutoff) if cutoff is not None else None
    bounds = (float(v[gap - 1]), float(v[gap])) if gap else (math.nan, math.nan)
    return OutlierCounts(gap=gap, ratio=ratio, elbow=elbow, gap_size=gap_size,
                         gap_bounds=bounds, ratio_value=ratio_value,
                         elbow_distance=distance, values=v, floor=float(floor),
                         below_top=below, below_top_ratio=below_value, threshold=above,
                         cutoff=None if cutoff is None else float(cutoff))


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


def below_top_count(values, floor: float = 0.0) -> tuple:
    """``(c, v_c / v_{c+1})`` at the largest consecutive ratio over ranks ``c >= 2`` among
    values ``> floor``: the ratio rule with the top step ``v_1 / v_2`` left out (module
    docstring). ``(0, nan)`` when fewer than three values exceed the floor."""
    v = _sorted_descending(values)
    positive = v[v > floor]
    if positive.size < 3:
        return 0, math.nan
    ratios = positive[1:-1] / positive[2:]
    i = int(np.argmax(ratios))
    if ratios[i] <= 1:
        return 0, float(ratios[i])
    return i + 2, float(ratios[i])


def threshold_count(values, cutoff: float) -> int:
    """The number of values strictly above ``cutoff`` (the paper's heuristic threshold)."""
    if not math.isfinite(float(cutoff)):
        raise ValueError(f"cutoff must be finite, got {cutoff!r}")
    v = _sorted_descending(values)
    return int(np.count_nonzero(v > float(cutoff)))


def step_after(values, rank: int) -> float:
    """``v_rank / v_{rank+1}`` of the descending values: the size of the step after the
    ``rank``-th largest value (``1 <= rank < K``; NaN unless both values are positive).

    With ``k`` classes the paper expects ``k - 1`` or ``k`` outliers, so ``step_after(v,
    k - 1)`` measures whether there is a drop where the count should end, whatever rank an
    argmax rule happens to pick."""
    v = _sorted_descending(values)
    if not isinstance(rank, (int, np.integer)) or not 1 <= rank < v.size:
        raise ValueError(f"rank must be an integer in [1, {v.size - 1}], got {rank!r}")
    upper, lower = v[rank - 1], v[rank]
    if not (upper > 0 and lower > 0):
        return math.nan
    return float(upper / lower)


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


#: The rule whose count is a run's outlier verdict unless the run names another: below-top,
#: which the "lambda_1 - lambda_2 accident" does not stop at 1 (module docstring).
DEFAULT_RULE = "below_top"


def outlier_verdict(counts: OutlierCounts, rule: str | None = None) -> tuple:
    """``(count, rule)``: one count per run, the same in every table and figure.

    ``rule`` is the run's choice (the demo records ``gap`` for two classes, where the
    below-top rule cannot count one outlier) or :data:`DEFAULT_RULE`; the gap rule stands
    in when the below-top rule has too few positive values to count (fewer than three)."""
    rule = rule or DEFAULT_RULE
    counted = counts.as_dict()
    if rule not in counted:
        raise ValueError(f"unknown outlier rule {rule!r}; choose one of {sorted(counted)}")
    if rule == "below_top" and math.isnan(counts.below_top_ratio):
        rule = "gap"
    return counted[rule], rule
