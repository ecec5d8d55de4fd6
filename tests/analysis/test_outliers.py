"""Tests for lanczos_hessian.analysis.outliers: the gap, ratio and elbow rules, the paper's
heuristic threshold, the below-top rule and the step after a rank (Sagun et al. 2018, Table 1)."""

from __future__ import annotations

import math

import contextlib

import numpy as np
import pytest
import torch

from lanczos_hessian.analysis.outliers import (
    OutlierCounts,
    below_top_count,
    count_outliers,
    elbow_count,
    gap_count,
    ratio_count,
    step_after,
    threshold_count,
)


@contextlib.contextmanager
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def planted_spectrum(num_spikes=10, n=500, seed=0):
    """Marchenko-Pastur bulk (``X^T X / N``, ``n / N = 1/2``, edge ~2.9) with its largest
    ``num_spikes`` values replaced by spikes on ``[15, 40]``; returned shuffled."""
    g = np.random.default_rng(seed)
    X = torch.from_numpy(g.standard_normal((2 * n, n)))
    with single_thread():  # small: extra threads only spin on a busy 2-core machine
        lam = torch.linalg.eigvalsh(X.T @ X / (2 * n)).numpy()
    lam[-num_spikes:] = np.linspace(15.0, 40.0, num_spikes)
    return g.permutation(lam), lam


@pytest.fixture(scope="module")
def planted():
    return planted_spectrum()


@pytest.mark.parametrize("top", [30, 50, 100])
def test_planted_spikes_recovered_by_all_rules(planted, top):
    shuffled, lam = planted
    values = np.sort(shuffled)[::-1][:top]
    counts = count_outliers(g_permute(values))
    assert isinstance(counts, OutlierCounts)
    assert (counts.gap, counts.ratio, counts.elbow) == (10, 10, 10)
    bulk_edge = lam[-11]
    assert counts.gap_bounds == (15.0, bulk_edge)
    assert counts.gap_size == pytest.approx(15.0 - bulk_edge)
    assert counts.ratio_value == pytest.approx(15.0 / bulk_edge)
    np.testing.assert_array_equal(counts.values, values)


def g_permute(values):
    return np.random.default_rng(1).permutation(values)


def test_hand_example():
    values = [1.8, 10.0, 2.0, 9.0, 1.9, 8.0]
    counts = count_outliers(values)
    assert counts.gap == 3 and counts.gap_size == pytest.approx(6.0)
    assert counts.ratio == 3 and counts.ratio_value == pytest.approx(4.0)
    # scaled points: x = i/5, y = (v - 1.8)/8.2; 1 - x - y is largest at the 4th value (2.0)
    assert counts.elbow == 3
    assert counts.elbow_distance == pytest.approx((1 - 0.6 - 0.2 / 8.2) / math.sqrt(2))


def test_elbow_three_points():
    # (0, 1), (0.5, 0.25), (1, 0): the middle point is 0.25 / sqrt(2) below the chord
    assert elbow_count([4.0, 1.0, 0.0]) == (1, pytest.approx(0.25 / math.sqrt(2)))


def test_ratio_uses_positive_values_only():
    values = [5.0, 4.0, 1.0, 0.5, -3.0, -10.0]
    counts = count_outliers(values)
    assert counts.gap == 5 and counts.gap_size == pytest.approx(7.0)  # -3 -> -10
    assert counts.ratio == 2 and counts.ratio_value == pytest.approx(4.0)  # 4 / 1
    # values at rounding level are below the default floor and take no part in ratios
    assert ratio_count([3.0, 2.0, 1e-12, 1e-15], floor=1e-8 * 3)[0] == 1
    assert count_outliers([3.0, 2.0, 1e-12, 1e-15]).ratio == 1
    assert count_outliers([3.0, 2.0, 1e-12, 1e-15], floor=0.0).ratio == 2  # 2 / 1e-12


def test_nothing_stands_out():
    assert gap_count([2.0, 2.0, 2.0]) == (0, 0.0)
    assert elbow_count([3.0, 2.0, 1.0]) == (0, 0.0)  # a straight line: no knee
    ratio, value = ratio_count([-1.0, -2.0])
    assert ratio == 0 and math.isnan(value)
    counts = count_outliers([1.0, 1.0])
    assert (counts.gap, counts.ratio, counts.elbow) == (0, 0, 0)
    assert all(math.isnan(b) for b in counts.gap_bounds)


@pytest.mark.parametrize("values, match", [
    ([], "at least 2"),
    ([1.0], "at least 2"),
    ([1.0, math.nan], "finite"),
    ([1.0, math.inf], "finite"),
])
def test_bad_input(values, match):
    with pytest.raises(ValueError, match=match):
        count_outliers(values)


def test_bad_floor():
    with pytest.raises(ValueError, match="floor"):
        count_outliers([2.0, 1.0], floor=-1.0)


def accident_spectrum(k=10, dominance=4.0, step=5.0, K=40, seed=0):
    """The ``lambda_1 - lambda_2`` accident: one dominant eigenvalue, ``k - 2`` more outliers
    spread over a factor 2 below it, then a bulk ``step`` times lower than the last outlier,
    decaying smoothly (ratios of neighbours below 1.15). The true count is ``k - 1``."""
    g = np.random.default_rng(seed)
    outliers = np.geomspace(1.0, 0.5, k - 2)
    bulk = (0.5 / step) * np.cumprod(np.r_[1.0, 1.0 + 0.15 * g.random(K - k)])[::-1]
    bulk = bulk / bulk.max() * (0.5 / step)
    return np.r_[dominance, outliers, np.sort(bulk)[::-1]]


@pytest.mark.parametrize("seed", range(5))
def test_accident_gap_rule_says_one_below_top_rule_finds_k_minus_1(seed):
    values = accident_spectrum(seed=seed)
    counts = count_outliers(values)
    assert counts.gap == 1  # 4 - 1 = 3 is the largest absolute gap
    assert counts.below_top == 9 and counts.below_top_ratio == pytest.approx(5.0)
    assert step_after(values, 9) == pytest.approx(5.0)
    assert counts.disagree()


def test_accident_ratio_rule_depends_on_which_step_is_larger():
    # the ratio rule picks the larger of v1/v2 and the step into the bulk; below-top does not
    mild, strong = accident_spectrum(dominance=3.0), accident_spectrum(dominance=8.0)
    assert count_outliers(mild).ratio == 9 and count_outliers(strong).ratio == 1
    assert count_outliers(mild).below_top == count_outliers(strong).below_top == 9


def test_below_top_cannot_report_a_single_outlier():
    # one outlier over a smooth bulk: gap and ratio say 1; the below-top rule (>= 2 by
    # construction) lands in the bulk - its documented failure mode
    values = np.r_[10.0, np.linspace(1.0, 0.5, 19)]
    counts = count_outliers(values)
    assert (counts.gap, counts.ratio) == (1, 1)
    assert counts.below_top >= 2
    assert below_top_count([3.0, 2.0]) == (0, pytest.approx(math.nan, nan_ok=True))


def test_planted_spikes_below_top(planted):
    values = np.sort(planted[0])[::-1][:50]
    assert count_outliers(values).below_top == 10


def test_threshold_rule():
    values = [5.0, 4.0, 1.0, 0.5, -3.0]
    assert threshold_count(values, 0.9) == 3
    assert threshold_count(values, 5.0) == 0  # strictly above
    counts = count_outliers(values, cutoff=0.9)
    assert counts.threshold == 3 and counts.cutoff == 0.9
    assert counts.as_dict()["threshold"] == 3
    assert count_outliers(values).threshold is None
    assert "threshold" not in count_outliers(values).as_dict()
    with pytest.raises(ValueError, match="cutoff"):
        threshold_count(values, math.nan)


def test_threshold_rule_does_not_transfer_across_curvature_scales():
    # the same spectrum shape, scaled down by 10 (a network trained longer): a fixed cutoff
    # counts the outliers of one scale only
    values = accident_spectrum()
    cutoff = 0.3
    assert threshold_count(values, cutoff) == 9
    assert threshold_count(values / 10, cutoff) == 1


def test_step_after():
    values = [1.0, 8.0, 2.0, 4.0]
    assert step_after(values, 1) == pytest.approx(2.0)
    assert step_after(values, 3) == pytest.approx(2.0)
    assert math.isnan(step_after([1.0, -1.0], 1))
    for bad in (0, 4, 1.5):
        with pytest.raises(ValueError, match="rank"):
            step_after(values, bad)
