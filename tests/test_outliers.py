"""Tests for lanczos_hessian.analysis.outliers (the three counting rules of Sagun et al. 2018)."""

from __future__ import annotations

import math

import contextlib

import numpy as np
import pytest
import torch

from lanczos_hessian.analysis.outliers import (
    OutlierCounts,
    count_outliers,
    elbow_count,
    gap_count,
    ratio_count,
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
